"""The paper's import surface: ``PartialSelectiveLoss(args)`` from its argparse Namespace (a missing flag
takes train.py's default, mode None means 'negative', clip None means 0, ``args.prior_path`` is read in
every mode) and ``ComputePrior``. New code uses `build_criterion`."""

from __future__ import annotations

from collections.abc import Sequence

from src.loss_functions.modes import LOSS_MODES
from src.loss_functions.partial_selective import PartialSelectiveLoss as _PartialSelectiveLoss
from src.prior.accumulator import ComputePrior
from src.prior.csv_format import read_prior_csv
from src.utils.values import is_none_path

__all__ = ["ComputePrior", "PartialSelectiveLoss"]


class PartialSelectiveLoss(_PartialSelectiveLoss):
    """``class_names`` matches the prior's rows by name; else their count is checked (args.num_classes)."""

    def __init__(self, args, class_names: Sequence[str] | None = None):
        settings = {name: getattr(args, name, entry.default)
                    for name, entry in LOSS_MODES["selective"].hyperparameters.items()}
        if settings["clip"] is None:
            settings["clip"] = 0.0
        prior_path = getattr(args, "prior_path", None)
        prior_path = None if is_none_path(prior_path) else prior_path
        prior = None
        if prior_path is not None:
            prior = read_prior_csv(prior_path, class_names)
            num_classes = len(class_names) if class_names is not None else getattr(args, "num_classes", None)
            if num_classes is not None and prior.numel() != num_classes:
                raise ValueError(f"prior file {str(prior_path)!r} has {prior.numel()} rows but the model has "
                                 f"{num_classes} classes; use the prior computed for this dataset")
        mode = getattr(args, "partial_loss_mode", None) or "negative"
        super().__init__(partial_loss_mode=mode, prior=prior, **settings)
        self.prior_path = prior_path
