"""Asymmetric loss (ASL, Ridnik et al. 2021) for full (or soft, in [0, 1]) targets y; the paper's import
surface. With p = sigmoid(x), q = 1 - p (if clip > 0: q = min(q + clip, 1)), p_m = 1 - q:

    loss = -sum( y log(max(p, eps)) (1 - p)^gamma_pos  +  (1 - y) log(max(q, eps)) p_m^gamma_neg )

computed in float32; ``disable_torch_grad_focal_loss`` makes the focusing factors constants for autograd.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from src.loss_functions.peer_base import float32_region


class AsymmetricLoss(nn.Module):
    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=True):
        super().__init__()
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"ASL: logits {tuple(x.shape)} and targets {tuple(y.shape)} must have the same "
                             "shape")
        with float32_region(x.device.type):
            x, y = x.float(), y.float()
            xs_pos = torch.sigmoid(x)
            xs_neg = 1.0 - xs_pos
            if self.clip is not None and self.clip > 0:
                xs_neg = (xs_neg + self.clip).clamp(max=1.0)
            loss = y * torch.log(xs_pos.clamp(min=self.eps))
            loss = loss + (1.0 - y) * torch.log(xs_neg.clamp(min=self.eps))
            if self.gamma_neg > 0 or self.gamma_pos > 0:
                with torch.no_grad() if self.disable_torch_grad_focal_loss else contextlib.nullcontext():
                    pt = xs_pos * y + xs_neg * (1.0 - y)
                    focusing = torch.pow(1.0 - pt, self.gamma_pos * y + self.gamma_neg * (1.0 - y))
                loss = loss * focusing
            return -loss.sum()


class AsymmetricLossOptimized(AsymmetricLoss):
    """The paper's memory-saving variant, the same loss here; it keeps the focusing factor's gradient."""

    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=False):
        super().__init__(gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss)
