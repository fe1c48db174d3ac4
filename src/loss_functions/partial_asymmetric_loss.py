"""The paper's import surface, kept as thin re-exports::

    from src.loss_functions.partial_asymmetric_loss import PartialSelectiveLoss, ComputePrior

``PartialSelectiveLoss(args)`` builds the loss from the paper's argparse Namespace as the paper's code
does: every loss flag missing from ``args`` takes train.py's default, ``partial_loss_mode`` None means
``negative`` and ``clip`` None means 0, and ``args.prior_path`` (None or 'none' for no prior) is read in
every mode (used by selective mode only). New code builds the loss with
`src.loss_functions.build_criterion` and the keyword class `src.loss_functions.PartialSelectiveLoss`;
``ComputePrior`` lives in `src.prior`.
"""

from __future__ import annotations

from collections.abc import Sequence

from src.loss_functions.factory import LOSS_FLAG_DEFAULTS, prior_path_of
from src.loss_functions.partial_selective import PartialSelectiveLoss as _PartialSelectiveLoss
from src.prior import ComputePrior, read_prior_csv

__all__ = ["ComputePrior", "PartialSelectiveLoss"]


class PartialSelectiveLoss(_PartialSelectiveLoss):
    """The paper's constructor, ``PartialSelectiveLoss(args)``; ``class_names`` (the model's classes)
    matches the prior file's rows by name, else the file order is kept and its row count is checked
    against ``args.num_classes`` when present."""

    def __init__(self, args, class_names: Sequence[str] | None = None):
        settings = {name: getattr(args, name, default) for name, default in LOSS_FLAG_DEFAULTS.items()}
        if settings["partial_loss_mode"] is None:  # the paper's code treats None as 'negative'
            settings["partial_loss_mode"] = "negative"
        if settings["clip"] is None:
            settings["clip"] = 0.0
        prior_path = prior_path_of(getattr(args, "prior_path", None))
        prior = None
        if prior_path is not None:
            prior = read_prior_csv(prior_path, class_names)
            num_classes = len(class_names) if class_names is not None else getattr(args, "num_classes", None)
            if num_classes is not None and prior.numel() != num_classes:
                raise ValueError(f"prior file {str(prior_path)!r} has {prior.numel()} rows but the model has "
                                 f"{num_classes} classes; use the prior computed for this dataset")
        super().__init__(prior=prior, **settings)
        self.prior_path = prior_path
