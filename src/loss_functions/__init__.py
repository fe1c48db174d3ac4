"""CSL's partial-label loss, the later methods it is compared with (docs/peer_methods.md), the table of
every mode (`LOSS_MODES`, `create_loss`), `build_criterion` and ASL. Needs torch, numpy and the prior's
CSV reader only, so the losses lift out without the engine, models or data code."""

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

