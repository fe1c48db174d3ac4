"""`build_criterion`: the training loss from train.py's flags - the one place that reads them."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from src.loss_functions.cole import expected_positives_per_image
from src.loss_functions.modes import LOSS_MODES, PEER_MODES, create_loss
from src.prior.csv_format import read_prior_csv
from src.utils.values import is_none_path

# Simulations that drop each label independently of its class: positives / annotated estimates its rate.
MISSING_AT_RANDOM = ("rps", "random_per_sample")


def _expected_positives(args, train_labels) -> float:
    """EPR's E is a known constant of the data (Cole et al. give it the true mean: 2.9 on COCO). Unset, it
    is estimated only where the labels identify it: complete labels, or RPS. FPC keeps n positives and n
    negatives per class whatever the class's frequency (every class would count 0.5: E = C / 2), and a
    single positive per image or an unknown annotation process do not identify it either."""
    if train_labels is None:
        raise ValueError("--partial_loss_mode epr without --epr_expected_positives estimates it from the "
                         "training labels: pass train_labels to build_criterion, or set the value")
    positives, negatives = train_labels.positive_counts(), train_labels.negative_counts()
    complete = int(positives.sum() + negatives.sum()) == train_labels.num_samples * len(positives)
    scheme, file = getattr(args, "simulate_partial_type", None), getattr(args, "partial_labels", None)
    if not complete and scheme not in MISSING_AT_RANDOM:
        source = (f"--simulate_partial_type {scheme}" if scheme else f"--partial_labels {file}" if file
                  else "the dataset's partial labels")
        raise ValueError(f"--partial_loss_mode epr: the labels of {source} do not identify the expected "
                         "number of positives per image (only complete labels or rps, labels missing at "
                         "random, do; fpc keeps n positives and n negatives per class whatever its "
                         "frequency); pass "
                         "--epr_expected_positives, the data's known mean (Cole et al.: 2.9 on COCO)")
    return expected_positives_per_image(positives, negatives, train_labels.num_samples)


def build_criterion(args, class_names: Sequence[str], num_samples: int | None = None,
                    train_labels=None) -> nn.Module:
    """The loss of train.py's Namespace ``args`` for the model's ``class_names`` (the CSL modes always sum,
    as the paper). ``train_labels`` (the training set's `LabelMatrix`) gives EPR's expected positives when
    unset, and the store size N of ll_cp / em_apl unless ``num_samples`` is given."""
    mode = args.partial_loss_mode
    if mode not in LOSS_MODES:
        raise ValueError(f"--partial_loss_mode {mode!r} is not supported; choose one of {list(LOSS_MODES)}")
    hyperparameters = list(LOSS_MODES[mode].hyperparameters)
    needed = [*hyperparameters, "prior_path", *(["loss_reduction"] if mode in PEER_MODES else [])]
    missing = [name for name in needed if not hasattr(args, name)]
    if missing:
        raise AttributeError(f"build_criterion: args lacks the loss flag(s) {missing}; pass the Namespace of "
                             "train.py's parser (src.args.build_train_parser)")
    settings = {name: getattr(args, name) for name in hyperparameters}
    prior_path = None if is_none_path(args.prior_path) else args.prior_path
    if prior_path is not None and mode != "selective":
        raise ValueError(f"--prior_path {str(prior_path)!r} is only used by --partial_loss_mode selective, "
                         f"but --partial_loss_mode is {mode!r}; pass --partial_loss_mode selective to train "
                         "with the prior, or drop --prior_path (or pass --prior_path none)")
    if mode == "selective":
        settings["prior"] = None if prior_path is None else read_prior_csv(prior_path, class_names)
    if mode == "epr" and settings["epr_expected_positives"] is None:
        settings["epr_expected_positives"] = _expected_positives(args, train_labels)
    if "num_samples" in LOSS_MODES[mode].needs:
        if num_samples is None and train_labels is None:
            raise ValueError(f"--partial_loss_mode {mode} keeps a per-sample label store: pass num_samples "
                             "(the number of training images) or train_labels to build_criterion")
        settings["num_samples"] = train_labels.num_samples if num_samples is None else num_samples
        settings["num_classes"] = len(class_names)
    return create_loss(mode, reduction=args.loss_reduction if mode in PEER_MODES else "sum", **settings)
