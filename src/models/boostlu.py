"""BoostLU (Kim et al., CVPR 2023; github.com/snucml/BridgeGapExplanationPAMC ``models.py``): the logits
are the mean over positions of the class activation map with its positive values multiplied by ``alpha``
(their 5), at training and test time. The Linear keeps its ``weight`` / ``bias`` keys, so plain checkpoints
load both ways; ``alpha`` = 1 gives the plain logits (the mean of a 1x1 conv is the Linear of the mean)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from torch import nn

AVERAGE_POOL_TYPES = ("avg", "fast", "fastavg")


class BoostLUClassifier(nn.Module):
    """(B, F, H, W) features -> (B, C) logits: mean over positions of boost(1x1 conv(features))."""

    def __init__(self, linear: nn.Linear, alpha: float):
        super().__init__()
        self.weight = linear.weight  # the same Parameters: same keys, same optimiser state
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.alpha = check_boostlu_alpha(alpha)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4:
            raise ValueError(f"BoostLU needs the (B, F, H, W) feature map, got shape {tuple(features.shape)}")
        cam = F.conv2d(features, self.weight[:, :, None, None], self.bias)
        cam = torch.where(cam > 0, cam * self.alpha, cam)
        return cam.mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, alpha={self.alpha}"


def check_boostlu_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or alpha <= 0:
        raise ValueError(f"boostlu_alpha must be a positive number (their default 5; 1 leaves the model "
                         f"unchanged), got {alpha!r}")
    return float(alpha)


def classifier_slot(model: nn.Module, option: str) -> tuple[nn.Module, str, str]:
    """(parent module, attribute name, dotted name) of the one classifier of a timm ``model``."""
    classifier_name = model.pretrained_cfg.get("classifier", "head.fc")
    if not isinstance(classifier_name, str):
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"{option}: {name} has several classifiers ({classifier_name}); it needs a model "
                         "with one")
    parent_name, _, attr = classifier_name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr, classifier_name


def install_boostlu(model: nn.Module, alpha: float) -> nn.Module:
    """Turn ``model``'s average-pool + Linear head into BoostLU's, in place."""
    alpha = check_boostlu_alpha(alpha)
    name = getattr(model, "model_name", type(model).__name__)
    parent, attr, classifier_name = classifier_slot(model, "--boostlu_alpha")
    linear = getattr(parent, attr)
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"--boostlu_alpha: the classifier {classifier_name} of {name} is a "
                         f"{type(linear).__name__}, not one Linear (the OpenImages bottleneck head has no "
                         "class activation map of its own); use --no-do_bottleneck_head")
    pool = getattr(parent, "global_pool", None)
    if not isinstance(pool, SelectAdaptivePool2d) or pool.pool_type not in AVERAGE_POOL_TYPES:
        raise ValueError(f"--boostlu_alpha: {name} does not end in global average pooling before "
                         f"{classifier_name} (found {pool!r}); BoostLU needs a CAM model")
    drop = getattr(parent, "drop_rate", 0.0) or getattr(getattr(parent, "drop", None), "p", 0.0)
    if drop:
        raise ValueError(f"--boostlu_alpha: {name} has head dropout {drop}; BoostLU's model has none")
    parent.global_pool = SelectAdaptivePool2d(pool_type="", flatten=False)  # pass the feature map through
    setattr(parent, attr, BoostLUClassifier(linear, alpha))
    model.boostlu_alpha = alpha
    return model
