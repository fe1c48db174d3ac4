"""Asymmetric loss (ASL, Ridnik et al. 2021) for multi-label classification with full labels.

With p = sigmoid(x), q = 1 - p (if clip > 0: q = min(q + clip, 1)) and targets y in {0, 1}:

    loss = -sum( y * log(max(p, eps)) * (1 - p)^gamma_pos  +  (1 - y) * log(max(q, eps)) * p_m^gamma_neg )

where p_m = 1 - q (the shifted probability). With ``disable_torch_grad_focal_loss`` the focusing
factors are constants for autograd. Computed in float32, also under autocast.

``AsymmetricLoss`` follows the formula term by term (soft targets in [0, 1] are allowed);
``AsymmetricLossOptimized`` gives the same values and gradients for binary targets with one
logarithm and one power per entry and no tensors kept between calls.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from src.loss_functions.peer_base import float32_region


def _float32(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(
            f"ASL: logits {tuple(x.shape)} and targets {tuple(y.shape)} must have the same shape"
        )
    return x.float(), y.float()


def _focusing_grad(disable: bool):
    """Context for the focusing factor: constant for autograd when ``disable`` is set."""
    return torch.no_grad() if disable else contextlib.nullcontext()


class AsymmetricLoss(nn.Module):
    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=True):
        super().__init__()
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed loss of logits ``x`` against targets ``y`` (same shape, values in [0, 1])."""
        with float32_region(x.device.type):
            x, y = _float32(x, y)
            xs_pos = torch.sigmoid(x)
            xs_neg = 1.0 - xs_pos
            if self.clip is not None and self.clip > 0:
                xs_neg = (xs_neg + self.clip).clamp(max=1.0)
            loss = y * torch.log(xs_pos.clamp(min=self.eps))
            loss = loss + (1.0 - y) * torch.log(xs_neg.clamp(min=self.eps))
            if self.gamma_neg > 0 or self.gamma_pos > 0:
                with _focusing_grad(self.disable_torch_grad_focal_loss):
                    pt = xs_pos * y + xs_neg * (1.0 - y)
                    focusing = torch.pow(1.0 - pt, self.gamma_pos * y + self.gamma_neg * (1.0 - y))
                loss = loss * focusing
            return -loss.sum()


class AsymmetricLossOptimized(nn.Module):
    """Same loss for binary targets; default keeps the gradient through the focusing factor, as the
    original optimised variant does."""

    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=False):
        super().__init__()
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip
        self.eps = eps
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed loss of logits ``x`` against binary targets ``y`` in {0, 1}."""
        with float32_region(x.device.type):
            x, y = _float32(x, y)
            positive = y > 0.5
            xs_pos = torch.sigmoid(x)
            xs_neg = 1.0 - xs_pos
            if self.clip is not None and self.clip > 0:
                xs_neg.add_(self.clip).clamp_(max=1.0)  # in place: autograd needs neither original
            # One log per entry: the probability of the entry's own label.
            pt = torch.where(positive, xs_pos, xs_neg)
            loss = torch.log(pt.clamp(min=self.eps))
            if self.gamma_neg > 0 or self.gamma_pos > 0:
                with _focusing_grad(self.disable_torch_grad_focal_loss):
                    gamma = torch.where(positive, float(self.gamma_pos), float(self.gamma_neg))
                    focusing = torch.pow(1.0 - pt, gamma)
                loss.mul_(focusing)  # log backward needs its input, not its output
            return -loss.sum()
