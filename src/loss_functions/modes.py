"""``LOSS_MODES``, the one table of every loss mode, and `create_loss`. The loss flags, the settings a resume
must keep and the reproduce labels derive from it; defaults come from the classes' signatures, ranges from
their ``bounds``; a hyper-parameter shared by modes (``clip``, ``em_alpha``) is checked to agree."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

from src.loss_functions.cole import AssumeNegativeLabelSmoothing, ExpectedPositiveRegularizer
from src.loss_functions.entropy import EMAsymmetricPseudoLabeling, EntropyMaximization
from src.loss_functions.generalized_robust import GeneralizedRobustLoss
from src.loss_functions.large_loss import (
    LargeLossCorrectionPermanent,
    LargeLossCorrectionTemporary,
    LargeLossRejection,
)
from src.loss_functions.partial_selective import CSL_MODES, PartialSelectiveLoss
from src.loss_functions.peer_base import PeerLoss
from src.loss_functions.robust import HillLoss, SPLCLoss


class HyperParameter(NamedTuple):
    default: float | int | str | None
    help: str  # the train.py flag's help, the only copy
    # When set, the flag defaults to None and build_criterion computes the value as described.
    unset_means: str | None = None
    bound: str | None = None  # the flag's range and the loss's keyword check (`src.utils.values`)

    @property
    def flag_default(self):
        return None if self.unset_means else self.default


@dataclass(frozen=True)
class ModeInfo:
    label: str  # how tables and plots name the mode (src/reproduce)
    reference: str  # the paper
    repository: str  # the official code
    hyperparameters: Mapping[str, HyperParameter]
    needs: tuple[str, ...] = ()  # data keywords of create_loss (not flags)
    build: Callable[..., nn.Module] = field(default=None, repr=False, compare=False)


def _defaults_of(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _table(cls, helps: dict[str, str], unset_means: dict[str, str] | None = None) -> dict:
    defaults = _defaults_of(cls)
    missing = sorted(set(helps) - set(defaults))
    if missing:  # a help for a keyword the class lacks: fail at import, not at the first run
        raise TypeError(f"{cls.__name__} has no keyword default for {missing}")
    unset_means = unset_means or {}
    return {name: HyperParameter(defaults[name], text, unset_means.get(name), cls.bounds.get(name))
            for name, text in helps.items()}


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


def _csl_info(mode: str, label: str, reference: tuple[str, str] = _CSL) -> ModeInfo:
    # The four CSL modes share PartialSelectiveLoss's keywords (likelihood_topk and prior_threshold act in
    # selective mode only, as in the paper); the prior itself comes from --prior_path.
    needs = ("prior",) if mode == "selective" else ()
    return ModeInfo(label, *reference, _table(PartialSelectiveLoss, _CSL_HELP),
                    needs, functools.partial(PartialSelectiveLoss, partial_loss_mode=mode))


def _peer_info(label: str, reference: tuple[str, str], cls, helps: dict[str, str], **unset_means) -> ModeInfo:
    needs = ("num_samples", "num_classes") if "num_samples" in inspect.signature(cls).parameters else ()
    return ModeInfo(label, *reference, _table(cls, helps, unset_means), needs, cls)


def _ll_info(label: str, cls, text: str) -> ModeInfo:
    name = f"{cls.mode}_delta"
    value = _defaults_of(cls)[name]
    return _peer_info(label, _KIM, cls, {name: text.format(mode=cls.mode, name=name, value=value)})


_EM_ALPHA_HELP = "em, em_apl: weight of the entropy maximisation on un-annotated labels"

LOSS_MODES: dict[str, ModeInfo] = {
    "negative": _csl_info("negative", "Negative"),
    "ignore": _csl_info("ignore", "Ignore"),
    "ignore_normalize_classes": _csl_info(
        "ignore_normalize_classes", "Ignore, normalised (Durand et al. 2019)",
        ('Durand et al., "Learning a Deep ConvNet for Multi-label Classification with Partial Labels", CVPR '
         "2019, as in CSL's code", _CSL[1])),
    "selective": _csl_info("selective", "CSL (Ben-Baruch et al. 2022)"),
    "an_ls": _peer_info("AN-LS (Cole et al. 2021)", _COLE, AssumeNegativeLabelSmoothing, {
        "an_ls_smoothing": "an_ls: label-smoothing coefficient of positives and assumed negatives"}),
    "epr": _peer_info("EPR (Cole et al. 2021)", _COLE, ExpectedPositiveRegularizer, {
        "epr_expected_positives": "epr: expected number of positives per image (Cole et al.: 2.9 on COCO)"},
        epr_expected_positives="estimated from complete or rps training labels (docs/peer_methods.md); "
                               "required otherwise (fpc, --partial_labels)"),
    "hill": _peer_info("Hill (Zhang et al. 2021)", _ZHANG, HillLoss, {
        "hill_lambda": "hill: lambda of the un-annotated term (lambda - p) p^2",
        "hill_margin": "hill: logit margin of the positive focal term",
        "hill_gamma": "hill: focusing parameter of the positive focal term"}),
    "splc": _peer_info("SPLC (Zhang et al. 2021)", _ZHANG, SPLCLoss, {
        "splc_tau": "splc: un-annotated labels with p above this count as positives (from splc_start_epoch)",
        "splc_margin": "splc: logit margin of the positive focal term",
        "splc_gamma": "splc: focusing parameter of the focal terms",
        "splc_start_epoch": "splc: first epoch (1-based) of the label correction"}),
    "ll_r": _ll_info("LL-R (Kim et al. 2022)", LargeLossRejection,
                     _LL_GROWING.replace("{what}", "rejected (loss 0)")),
    "ll_ct": _ll_info("LL-Ct (Kim et al. 2022)", LargeLossCorrectionTemporary,
                      _LL_GROWING.replace("{what}", "flipped to positive for the batch")),
    "ll_cp": _ll_info("LL-Cp (Kim et al. 2022)", LargeLossCorrectionPermanent,
                      "{mode}: from epoch 2, the ceil(B C {name}) un-annotated entries of each batch with "
                      "the largest loss are flipped to positive for good (authors' value {value})"),
    "em": _peer_info("EM (Zhou et al. 2022)", _ZHOU, EntropyMaximization, {"em_alpha": _EM_ALPHA_HELP}),
    "em_apl": _peer_info("EM-APL (Zhou et al. 2022)", _ZHOU, EMAsymmetricPseudoLabeling, {
        "em_alpha": _EM_ALPHA_HELP,
        "apl_beta": "em_apl: weight of the soft pseudo-negative terms",
        "apl_share": "em_apl: share of each class's un-annotated labels pseudo-labelled by the last epoch",
        "apl_warmup_epochs": "em_apl: pseudo-labelling passes run after this epoch and every later one"}),
    "gr": _peer_info("GR-Loss (Chen et al. 2024)", _CHEN, GeneralizedRobustLoss, _GR_HELP),
}
LOSS_MODE_NAMES = tuple(LOSS_MODES)  # all 14; CSL_MODES (partial_selective.py) are the paper's four
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

# The loss settings beside the hyper-parameters, one train.py flag each.
LOSS_SETTINGS: dict[str, HyperParameter] = {
    "partial_loss_mode": HyperParameter(
        _defaults_of(PartialSelectiveLoss)["partial_loss_mode"],
        f"how un-annotated labels enter the loss: {', '.join(CSL_MODES)} (CSL's) or a later method (the "
        "other choices; docs/peer_methods.md)"),
    "prior_path": HyperParameter(None, "class prior CSV (Classes,avg_pred) used by selective mode; 'none' "
                                       "for no prior"),
    "loss_reduction": HyperParameter(
        _defaults_of(PeerLoss)["reduction"],
        "how the peer loss modes reduce their B x C terms: 'sum' (CSL's convention; the CSL modes always "
        "sum, as the paper) or 'mean' (the single-positive papers'); 'sum' = B*C x 'mean'"),
}
# Every setting that changes the loss: a run resumed with any of them changed is not the same run.
LOSS_SETTING_NAMES = (*LOSS_SETTINGS, *LOSS_HYPERPARAMETERS)


def create_loss(mode: str, *, reduction: str = "sum", **keywords) -> nn.Module:
    """The loss of ``mode``: hyper-parameters default to the official values; data keywords
    ``num_samples``/``num_classes`` (store modes) or ``prior`` (selective)."""
    if mode not in LOSS_MODES:
        raise ValueError(f"loss mode {mode!r} is not supported; choose one of {list(LOSS_MODES)}")
    info = LOSS_MODES[mode]
    allowed = [*info.hyperparameters, *info.needs]
    unknown = sorted(set(keywords) - set(allowed))
    if unknown:
        raise TypeError(f"create_loss({mode!r}) got unknown keyword(s) {unknown}; mode {mode!r} takes "
                        f"{allowed} and reduction")
    return info.build(reduction=reduction, **keywords)
