"""`build_criterion`: the training loss from train.py's flags - the one place that reads them."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

from src.loss_functions.partial_selective import PartialSelectiveLoss
from src.prior import read_prior_csv

# The loss flags of train.py and their defaults, derived from PartialSelectiveLoss's keywords (declared
# there once); the prior comes from --prior_path instead.
LOSS_FLAG_DEFAULTS = {name: parameter.default
                      for name, parameter in inspect.signature(PartialSelectiveLoss).parameters.items()
                      if name != "prior"}


def prior_path_of(value: str | Path | None) -> str | Path | None:
    """The prior file named by a --prior_path value, or None for no prior (None, 'none', 'None', '')."""
    if value is None or str(value).strip().lower() in ("none", ""):
        return None
    return value


def build_criterion(args, class_names: Sequence[str]) -> PartialSelectiveLoss:
    """The :class:`PartialSelectiveLoss` of train.py's flags (``args``: its argparse Namespace).

    Reads ``--partial_loss_mode``, ``--clip``, ``--gamma_pos/neg/unann``, ``--alpha_pos/neg/unann``,
    ``--likelihood_topk``, ``--prior_threshold`` and ``--prior_path``; the prior file's rows are matched
    to ``class_names`` (the model's classes, in output order) by `src.prior.read_prior_csv`. A prior is
    used by selective mode only: ``--prior_path`` with another mode is a ValueError.
    """
    missing = [name for name in (*LOSS_FLAG_DEFAULTS, "prior_path") if not hasattr(args, name)]
    if missing:
        raise AttributeError(f"build_criterion: args lacks the loss flag(s) {missing}; pass the Namespace of "
                             "train.py's parser (src.args.build_train_parser)")
    settings = {name: getattr(args, name) for name in LOSS_FLAG_DEFAULTS}
    prior_path = prior_path_of(args.prior_path)
    if prior_path is not None and settings["partial_loss_mode"] != "selective":
        raise ValueError(
            f"--prior_path {str(prior_path)!r} is only used by --partial_loss_mode selective, but "
            f"--partial_loss_mode is {settings['partial_loss_mode']!r}; pass --partial_loss_mode selective "
            "to train with the prior, or drop --prior_path (or pass --prior_path none)"
        )
    prior = None if prior_path is None else read_prior_csv(prior_path, class_names)
    return PartialSelectiveLoss(prior=prior, **settings)
