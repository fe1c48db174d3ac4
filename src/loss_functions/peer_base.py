"""The frame of every loss mode: ``loss(logits, targets, epoch=e, num_epochs=T, indices=idx)``, targets in
{1 positive, 0 known negative, -1 un-annotated}, ``e`` 1-based, ``idx`` the dataset indices (read by the
store modes). A mode gives its per-entry loss matrix (B, C) and an optional batch regulariser; they are
computed in float32 (also under autocast) and reduced by 'mean' (over B x C, + regulariser: the SPML
papers) or 'sum' (B C times the 'mean' value: CSL's convention; CSL, Hill and SPLC sum in their code).
Known negatives, unseen by the single-positive methods, get -log(1 - p) in every later method (ours).
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.utils.values import check_bounds

REDUCTIONS = ("sum", "mean")


class Labels(NamedTuple):
    """Boolean masks (B, C)."""

    positive: Tensor
    negative: Tensor  # known negatives
    unannotated: Tensor


def float32_region(device_type: str):
    """Autocast off: a loss of float32 logits stays float32 (log and pow need it)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def entrywise(labels: Labels, logits: Tensor, positive_term: Tensor, unannotated_term: Tensor,
              negative_term: Tensor | None = None) -> Tensor:
    """The loss matrix; -log(1 - p) on known negatives by default (torch.where: no gradient through an
    unused branch)."""
    negative_term = F.softplus(logits) if negative_term is None else negative_term
    rest = torch.where(labels.unannotated, unannotated_term, negative_term)
    return torch.where(labels.positive, positive_term, rest)


def require_epoch(mode: str, epoch, num_epochs=None, *, need_total: bool = False) -> int:
    if epoch is None or int(epoch) < 1:
        raise ValueError(f"loss mode {mode!r} follows an epoch schedule: call it with epoch=e (the 1-based "
                         f"epoch, the first epoch is 1), got epoch={epoch!r}")
    if need_total and (num_epochs is None or int(num_epochs) < 1):
        raise ValueError(f"loss mode {mode!r} needs num_epochs=T (the number of training epochs), got "
                         f"num_epochs={num_epochs!r}")
    return int(epoch)


class PeerLoss(nn.Module):
    """Subclasses set ``mode``, ``bounds`` (keyword -> bound, also the flag's range), :meth:`loss_terms`."""

    mode = ""
    bounds: ClassVar[dict[str, str]] = {}

    def __init__(self, *, reduction: str = "sum", **settings):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
        check_bounds(self.bounds, **settings)
        self.reduction = reduction
        self.settings = {name: int(value) if "integer" in self.bounds.get(name, "") else float(value)
                         for name, value in settings.items()}
        for name, value in self.settings.items():
            setattr(self, name, value)

    def loss_terms(self, logits: Tensor, labels: Labels, *, epoch, num_epochs, indices
                   ) -> tuple[Tensor, Tensor | None]:
        """(per-entry loss matrix (B, C), batch regulariser added outside the mean, or None)."""
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor, *, epoch: int | None = None,
                num_epochs: int | None = None, indices: Tensor | None = None) -> Tensor:
        if logits.dim() != 2 or tuple(targets.shape) != tuple(logits.shape):
            raise ValueError(f"logits must be (batch, classes) and targets the same shape; got logits "
                             f"{tuple(logits.shape)} and targets {tuple(targets.shape)}")
        targets = targets.to(logits.device)
        labels = Labels(targets == 1, targets == 0, targets == -1)
        if not bool((labels.positive | labels.negative | labels.unannotated).all()):
            raise ValueError("targets must hold only 1 (positive), 0 (negative) and -1 (un-annotated)")
        with float32_region(logits.device.type):
            terms, regulariser = self.loss_terms(logits.float(), labels, epoch=epoch, num_epochs=num_epochs,
                                                 indices=indices)
        if self.reduction == "mean":
            return terms.mean() if regulariser is None else terms.mean() + regulariser
        # 'sum' = B*C times 'mean': the matrix summed, the regulariser scaled by the entry count.
        return terms.sum() if regulariser is None else terms.sum() + regulariser * terms.numel()

    def extra_repr(self) -> str:
        settings = "".join(f", {name}={value}" for name, value in self.settings.items())
        return f"mode={self.mode}, reduction={self.reduction}{settings}"
