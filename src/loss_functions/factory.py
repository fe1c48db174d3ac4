"""`build_criterion`: the training loss from train.py's flags - the one place that reads them."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from src.loss_functions.cole import expected_positives_per_image
from src.loss_functions.modes import LOSS_MODES, PEER_MODES, create_loss
from src.prior.csv_format import read_prior_csv
from src.utils.values import is_none_path


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
        if train_labels is None:
            raise ValueError("--partial_loss_mode epr without --epr_expected_positives computes the expected "
                             "number of positives from the training labels: pass train_labels to "
                             "build_criterion, or set --epr_expected_positives (Cole et al.: 2.9 on COCO)")
        settings["epr_expected_positives"] = expected_positives_per_image(
            train_labels.positive_counts(), train_labels.negative_counts(), train_labels.num_samples)
    if "num_samples" in LOSS_MODES[mode].needs:
        if num_samples is None and train_labels is None:
            raise ValueError(f"--partial_loss_mode {mode} keeps a per-sample label store: pass num_samples "
                             "(the number of training images) or train_labels to build_criterion")
        settings["num_samples"] = train_labels.num_samples if num_samples is None else num_samples
        settings["num_classes"] = len(class_names)
    return create_loss(mode, reduction=args.loss_reduction if mode in PEER_MODES else "sum", **settings)
