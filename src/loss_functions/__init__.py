"""Loss functions: the partial-label selective loss (CSL), its builder from train.py's flags, and ASL.

The class prior (its file, the running average ``ComputePrior``) is owned by `src.prior`;
`src.loss_functions.partial_asymmetric_loss` keeps the paper's import surface.
"""

from src.loss_functions.factory import build_criterion
from src.loss_functions.losses import AsymmetricLoss, AsymmetricLossOptimized
from src.loss_functions.partial_selective import PARTIAL_LOSS_MODES, PartialSelectiveLoss

__all__ = [
    "PARTIAL_LOSS_MODES",
    "AsymmetricLoss",
    "AsymmetricLossOptimized",
    "PartialSelectiveLoss",
    "build_criterion",
]
