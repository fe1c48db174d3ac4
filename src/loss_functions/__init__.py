"""Loss functions: the partial-label selective loss (CSL), the later partial-label methods it is compared
with (docs/peer_methods.md), one table of every mode with `create_loss`, the builder from train.py's
flags, and ASL.

Imports torch, numpy and the prior's CSV reader only, so a researcher can lift the losses without the
engine, the models or the data code. `src.loss_functions.partial_asymmetric_loss` keeps the paper's
import surface.
"""

from src.loss_functions.factory import build_criterion
from src.loss_functions.losses import AsymmetricLoss, AsymmetricLossOptimized
from src.loss_functions.modes import (
    LOSS_HYPERPARAMETERS,
    LOSS_MODE_NAMES,
    LOSS_MODES,
    LOSS_SETTING_NAMES,
    LOSS_SETTINGS,
    PEER_MODES,
    create_loss,
)
from src.loss_functions.partial_selective import CSL_MODES, PartialSelectiveLoss
from src.loss_functions.peer_base import REDUCTIONS

__all__ = [
    "CSL_MODES",
    "LOSS_HYPERPARAMETERS",
    "LOSS_MODES",
    "LOSS_MODE_NAMES",
    "LOSS_SETTINGS",
    "LOSS_SETTING_NAMES",
    "PEER_MODES",
    "REDUCTIONS",
    "AsymmetricLoss",
    "AsymmetricLossOptimized",
    "PartialSelectiveLoss",
    "build_criterion",
    "create_loss",
]
