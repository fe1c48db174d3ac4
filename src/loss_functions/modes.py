"""Every loss mode in one table, and `create_loss`, the one way to build any of them.

``LOSS_MODES[mode]`` is a :class:`ModeInfo`: the paper, the official repository, the hyper-parameters
(name -> :class:`HyperParameter` (default, help, unset_means)) and the data keywords the mode needs.
Hyper-parameter names are create_loss keywords and train.py flags alike (``--hill_lambda``); a name
shared by several modes (CSL's ``clip``, EM's ``em_alpha``) means the same thing with the same default
in each. Defaults are read from the loss classes' signatures, so they are declared once, there.

    loss = create_loss("hill")                                      # official defaults, reduction 'sum'
    loss = create_loss("ll_cp", num_samples=N, num_classes=C, reduction="mean")
    value = loss(logits, targets, epoch=e, num_epochs=T, indices=idx)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import Tensor, nn

from src.loss_functions.cole import AssumeNegativeLabelSmoothing, ExpectedPositiveRegularizer
from src.loss_functions.entropy import EMAsymmetricPseudoLabeling, EntropyMaximization
from src.loss_functions.generalized_robust import GeneralizedRobustLoss
from src.loss_functions.large_loss import (
    LargeLossCorrectionPermanent,
    LargeLossCorrectionTemporary,
    LargeLossRejection,
)
from src.loss_functions.partial_selective import PARTIAL_LOSS_MODES as CSL_MODES
from src.loss_functions.partial_selective import PartialSelectiveLoss
from src.loss_functions.peer_base import REDUCTIONS
from src.loss_functions.robust import HillLoss, SPLCLoss


class HyperParameter(NamedTuple):
    default: float | int | str
    help: str
    # When set, train.py's flag defaults to None and build_criterion computes the value as described.
    unset_means: str | None = None

    @property
    def flag_default(self):
        return None if self.unset_means else self.default


# train.py's --loss_reduction (choices: REDUCTIONS); build_criterion passes it to the peer modes.
LOSS_REDUCTION = HyperParameter("sum", "how the peer loss modes reduce their B x C terms: 'sum' (CSL's "
                                       "convention; the CSL modes always sum) or 'mean' (the single-positive "
                                       "papers'); 'sum' = B*C x 'mean'")


@dataclass(frozen=True)
class ModeInfo:
    reference: str  # the paper
    repository: str  # the official code
    hyperparameters: Mapping[str, HyperParameter]
    needs: tuple[str, ...] = ()  # data keywords of create_loss (not flags)
    build: Callable[..., nn.Module] = field(default=None, repr=False, compare=False)


class MeanOverEntries(nn.Module):
    """A summing loss divided by the number of B x C entries (reduction 'mean' of the CSL modes)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: Tensor, targets: Tensor, **keywords) -> Tensor:
        return self.loss(logits, targets, **keywords) / logits.numel()


def _defaults_of(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _table(cls, helps: dict[str, str], unset_means: dict[str, str] | None = None) -> dict:
    """HyperParameters of ``cls``: defaults from its signature, help texts from ``helps``."""
    defaults = _defaults_of(cls)
    missing = sorted(set(helps) - set(defaults))
    if missing:  # a help for a keyword the class lacks: fail at import, not at the first run
        raise TypeError(f"{cls.__name__} has no keyword default for {missing}")
    unset_means = unset_means or {}
    return {name: HyperParameter(defaults[name], text, unset_means.get(name)) for name, text in helps.items()}


def _peer_build(cls):
    def build(*, reduction: str = "sum", **keywords) -> nn.Module:
        return cls(reduction=reduction, **keywords)
    return build


def _csl_build(mode: str):
    def build(*, reduction: str = "sum", **keywords) -> nn.Module:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
        loss = PartialSelectiveLoss(partial_loss_mode=mode, **keywords)
        return loss if reduction == "sum" else MeanOverEntries(loss)
    return build


_CSL = ('Ben-Baruch et al., "Multi-label Classification with Partial Annotations using Class-aware Selective '
        'Loss", CVPR 2022', "github.com/Alibaba-MIIL/PartialLabelingCSL")
_COLE = ('Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021',
         "github.com/elijahcole/single-positive-multi-label")
_ZHANG = ('Zhang et al., "Simple and Robust Loss Design for Multi-Label Learning with Missing Labels", '
          "arXiv 2112.07368", "github.com/xinyu1205/robust-loss-mlml")
_KIM = ('Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label Classification", CVPR 2022 (deltas '
        'and the LL-Cp fix from their "Bridging the Gap between Model Explanations in Partially Annotated '
        'Multi-label Classification", CVPR 2023)',
        "github.com/snucml/LargeLossMatters; github.com/youngwk/BridgeGapExplanationPAMC")
_ZHOU = ('Zhou et al., "Acknowledging the Unknown for Multi-label Learning with Single Positive Labels", '
         "ECCV 2022", "github.com/Correr-Zhou/SPML-AckTheUnknown")
_CHEN = ('Chen et al., "Boosting Single Positive Multi-label Classification with Generalized Robust Loss", '
         "IJCAI 2024", "github.com/yan4xi1/GRLoss")

_CSL_HELP = {
    "clip": "CSL modes: probability margin of the negative terms (ASL clip)",
    **{f"gamma_{kind}": f"CSL modes: focusing parameter of {what} labels"
       for kind, what in (("pos", "positive"), ("neg", "negative"), ("unann", "un-annotated"))},
    **{f"alpha_{kind}": f"CSL modes: weight of {what} labels"
       for kind, what in (("pos", "positive"), ("neg", "negative"), ("unann", "un-annotated"))},
}
_SELECTIVE_HELP = {
    "likelihood_topk": "selective mode: per batch, the likelihood_topk x batch-size un-annotated labels with "
                       "the highest predicted probability are ignored (per GPU batch under DDP)",
    "prior_threshold": "selective mode: un-annotated labels of classes whose prior exceeds this are ignored",
}
_LL_GROWING = ("{mode}: from epoch 2, the ceil(B C (e - 1) {name}) un-annotated entries of a batch with the "
               "largest loss are {what} (authors' value {value})")
_GR_HELP = {"gr_q2": "gr: q2 of the positive-like term (1 - p^q2) / q2 on un-annotated labels",
            "gr_q3": "gr: q3 of the negative-like term (1 - (1 - p)^q3) / q3 on un-annotated labels",
            **{f"gr_{name}_{end}": f"gr: {name} of {what} at the {end} of the epoch schedule"
               for name, what in (("w", "K = sigmoid(w p + b)"), ("b", "K = sigmoid(w p + b)"),
                                  ("mu", "V = exp(-(p - mu)^2 / (2 sigma^2))"),
                                  ("sigma", "V = exp(-(p - mu)^2 / (2 sigma^2))"))
               for end in ("start", "end")}}


def _csl_info(mode: str, reference: tuple[str, str] = _CSL) -> ModeInfo:
    # The four CSL modes share PartialSelectiveLoss's keywords (likelihood_topk and prior_threshold act in
    # selective mode only, as before); the prior itself comes from --prior_path.
    needs = ("prior",) if mode == "selective" else ()
    return ModeInfo(*reference, _table(PartialSelectiveLoss, {**_CSL_HELP, **_SELECTIVE_HELP}), needs,
                    _csl_build(mode))


def _ll_info(cls, name: str, text: str) -> ModeInfo:
    value = _defaults_of(cls)[name]
    return ModeInfo(*_KIM, _table(cls, {name: text.format(mode=cls.mode, name=name, value=value)}),
                    ("num_samples", "num_classes") if cls is LargeLossCorrectionPermanent else (),
                    _peer_build(cls))


_STORE = ("num_samples", "num_classes")
_EM_ALPHA_HELP = "em, em_apl: weight of the entropy maximisation on un-annotated labels"

LOSS_MODES: dict[str, ModeInfo] = {
    "negative": _csl_info("negative"),
    "ignore": _csl_info("ignore"),
    "ignore_normalize_classes": _csl_info("ignore_normalize_classes", (
        'Durand et al., "Learning a Deep ConvNet for Multi-label Classification with Partial Labels", CVPR '
        "2019, as in CSL's code", _CSL[1])),
    "selective": _csl_info("selective"),
    "an_ls": ModeInfo(*_COLE, _table(AssumeNegativeLabelSmoothing, {
        "an_ls_smoothing": "an_ls: label-smoothing coefficient of positives and assumed negatives"}),
        build=_peer_build(AssumeNegativeLabelSmoothing)),
    "epr": ModeInfo(*_COLE, _table(ExpectedPositiveRegularizer, {
        "epr_expected_positives": "epr: expected number of positives per image (Cole et al.: 2.9 on COCO)"},
        unset_means={"epr_expected_positives": "computed from the training labels: the sum over classes of "
                                               "positives / images annotated for the class"}),
        build=_peer_build(ExpectedPositiveRegularizer)),
    "hill": ModeInfo(*_ZHANG, _table(HillLoss, {
        "hill_lambda": "hill: lambda of the un-annotated term (lambda - p) p^2",
        "hill_margin": "hill: logit margin of the positive focal term",
        "hill_gamma": "hill: focusing parameter of the positive focal term"}), build=_peer_build(HillLoss)),
    "splc": ModeInfo(*_ZHANG, _table(SPLCLoss, {
        "splc_tau": "splc: un-annotated labels with p above this count as positives (from splc_start_epoch)",
        "splc_margin": "splc: logit margin of the positive focal term",
        "splc_gamma": "splc: focusing parameter of the focal terms",
        "splc_start_epoch": "splc: first epoch (1-based) of the label correction"}),
        build=_peer_build(SPLCLoss)),
    "ll_r": _ll_info(LargeLossRejection, "ll_r_delta", _LL_GROWING.replace("{what}", "rejected (loss 0)")),
    "ll_ct": _ll_info(LargeLossCorrectionTemporary, "ll_ct_delta",
                      _LL_GROWING.replace("{what}", "flipped to positive for the batch")),
    "ll_cp": _ll_info(LargeLossCorrectionPermanent, "ll_cp_delta",
                      "{mode}: from epoch 2, the ceil(B C {name}) un-annotated entries of each batch with "
                      "the largest loss are flipped to positive for good (authors' value {value})"),
    "em": ModeInfo(*_ZHOU, _table(EntropyMaximization, {"em_alpha": _EM_ALPHA_HELP}),
        build=_peer_build(EntropyMaximization)),
    "em_apl": ModeInfo(*_ZHOU, _table(EMAsymmetricPseudoLabeling, {
        "em_alpha": _EM_ALPHA_HELP,
        "apl_beta": "em_apl: weight of the soft pseudo-negative terms",
        "apl_share": "em_apl: share of each class's un-annotated labels pseudo-labelled by the last epoch",
        "apl_warmup_epochs": "em_apl: pseudo-labelling passes run after this epoch and every later one"}),
        _STORE, _peer_build(EMAsymmetricPseudoLabeling)),
    "gr": ModeInfo(*_CHEN, _table(GeneralizedRobustLoss, _GR_HELP), build=_peer_build(GeneralizedRobustLoss)),
}
PARTIAL_LOSS_MODES = tuple(LOSS_MODES)
PEER_MODES = tuple(mode for mode in LOSS_MODES if mode not in CSL_MODES)


def _all_hyperparameters() -> dict[str, HyperParameter]:
    merged: dict[str, HyperParameter] = {}
    for mode, info in LOSS_MODES.items():
        for name, entry in info.hyperparameters.items():
            if name in merged and merged[name] != entry:
                raise TypeError(f"hyper-parameter {name!r} of mode {mode!r} differs from another mode's: "
                                f"{entry} vs {merged[name]}; give it its own name")
            merged[name] = entry
    return merged


# Every hyper-parameter name once (one train.py flag each), in table order.
LOSS_HYPERPARAMETERS: dict[str, HyperParameter] = _all_hyperparameters()


def create_loss(mode: str, *, reduction: str = "sum", **keywords) -> nn.Module:
    """The loss of ``mode`` (a key of LOSS_MODES) with its hyper-parameters (defaults: the official values)
    and data keywords (``num_samples``/``num_classes`` for the store modes, ``prior`` for selective).

    Every returned module is called as ``loss(logits, targets, epoch=e, num_epochs=T, indices=idx)``.
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"loss mode {mode!r} is not supported; choose one of {list(LOSS_MODES)}")
    info = LOSS_MODES[mode]
    allowed = [*info.hyperparameters, *info.needs]
    unknown = sorted(set(keywords) - set(allowed))
    if unknown:
        raise TypeError(f"create_loss({mode!r}) got unknown keyword(s) {unknown}; mode {mode!r} takes "
                        f"{allowed} and reduction")
    missing = [name for name in info.needs if name in _STORE and keywords.get(name) is None]
    if missing:
        raise ValueError(f"loss mode {mode!r} keeps a per-sample label store and needs {missing}: pass "
                         "num_samples=N (training images) and num_classes=C")
    return info.build(reduction=reduction, **keywords)
