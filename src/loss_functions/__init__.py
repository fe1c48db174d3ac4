"""Loss functions: the partial-label selective loss (CSL), its class prior, and ASL."""

from src.loss_functions.losses import AsymmetricLoss, AsymmetricLossOptimized
from src.loss_functions.partial_asymmetric_loss import (
    PARTIAL_LOSS_MODES,
    ComputePrior,
    PartialSelectiveLoss,
    read_prior_csv,
)

__all__ = [
    "PARTIAL_LOSS_MODES",
    "AsymmetricLoss",
    "AsymmetricLossOptimized",
    "ComputePrior",
    "PartialSelectiveLoss",
    "read_prior_csv",
]
