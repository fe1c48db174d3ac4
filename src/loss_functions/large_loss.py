"""LL-R, LL-Ct and LL-Cp of Kim et al. (CVPR 2022; github.com/snucml/LargeLossMatters), with the deltas
and the LL-Cp fix of their BoostLU code (github.com/youngwk/BridgeGapExplanationPAMC).

The loss matrix is BCE(x, y), y = 1 on positives, 0 elsewhere. From epoch 2 on, the k un-annotated entries
of the batch with the largest loss (ties at the k-th included) are ll_r: rejected (loss 0, still counted
in the mean); ll_ct: flipped to positive for the batch; ll_cp: flipped for good (a per-sample store).
k = ceil(B C (1 - clean_rate)) for ll_r / ll_ct, clean_rate starting at 1 and losing delta after every
epoch as in their train.py; k = ceil(B C delta) for ll_cp. LargeLossMatters tests ``mod_scheme is
'LL-Cp'``, False for a parsed string (so LL-Ct runs); we run the intended LL-Cp, as BoostLU (``==``).
Known negatives keep BCE(x, 0), never selected (as BoostLU's OpenImages setting).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from src.loss_functions.label_store import apply_store_updates, new_label_store, store_rows
from src.loss_functions.peer_base import Labels, PeerLoss, require_epoch


class _LargeLoss(PeerLoss):
    flip = True
    bounds = {f"{mode}_delta": "in [0, 1]" for mode in ("ll_r", "ll_ct", "ll_cp")}  # a share of B x C

    @property
    def delta(self) -> float:
        return self.settings[f"{self.mode}_delta"]

    def num_selected(self, num_entries: int, epoch: int) -> int:
        """k: how many un-annotated entries of a batch of ``num_entries`` are rejected or flipped."""
        clean_rate = 1.0
        for _ in range(epoch - 1):  # their running subtraction, rounding included
            clean_rate -= self.delta
        if clean_rate == 1:  # their "epoch 1": the loss is left as it is
            return 0
        return min(math.ceil(num_entries * (1 - clean_rate)), num_entries)

    def large_loss_terms(self, logits: Tensor, positive: Tensor, unannotated: Tensor, epoch: int
                         ) -> tuple[Tensor, Tensor | None]:
        """(loss matrix, mask of the selected entries or None when nothing is selected)."""
        bce = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")
        k = self.num_selected(logits.numel(), epoch)
        if k == 0:
            return bce, None
        with torch.no_grad():
            # Annotated entries score -1, below every loss, so they are never selected.
            scores = bce.masked_fill(~unannotated, -1.0).flatten()
            kth_largest = torch.topk(scores, k, sorted=False).values.min()
            selected = unannotated & (bce >= kth_largest)
        if self.flip:
            flipped = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
            return torch.where(selected, flipped, bce), selected
        return torch.where(selected, torch.zeros_like(bce), bce), selected

    def loss_terms(self, logits: Tensor, labels: Labels, *, epoch, **_) -> tuple[Tensor, None]:
        epoch = require_epoch(self.mode, epoch)
        terms, _ = self.large_loss_terms(logits, labels.positive, labels.unannotated, epoch)
        return terms, None


class LargeLossRejection(_LargeLoss):
    mode, flip = "ll_r", False

    def __init__(self, *, ll_r_delta: float = 0.005, reduction: str = "sum"):
        super().__init__(reduction=reduction, ll_r_delta=ll_r_delta)


class LargeLossCorrectionTemporary(_LargeLoss):
    mode = "ll_ct"

    def __init__(self, *, ll_ct_delta: float = 0.002, reduction: str = "sum"):
        super().__init__(reduction=reduction, ll_ct_delta=ll_ct_delta)


class LargeLossCorrectionPermanent(_LargeLoss):
    """Buffer ``flipped_to_positive``: int8 (N, C), 1 where the label was flipped for good."""

    mode = "ll_cp"

    def __init__(self, *, num_samples: int | None = None, num_classes: int | None = None,
                 ll_cp_delta: float = 0.001, reduction: str = "sum"):
        super().__init__(reduction=reduction, ll_cp_delta=ll_cp_delta)
        self.register_buffer("flipped_to_positive", new_label_store(self.mode, num_samples, num_classes,
                                                                    torch.int8, 0))

    def num_selected(self, num_entries: int, epoch: int) -> int:
        # A constant k from epoch 2 on (their LL-Cp branch): ceil(B C delta).
        if epoch < 2 or self.delta == 0:
            return 0
        return min(math.ceil(num_entries * self.delta), num_entries)

    def loss_terms(self, logits: Tensor, labels: Labels, *, epoch, indices=None, **_) -> tuple[Tensor, None]:
        epoch = require_epoch(self.mode, epoch)
        stored = store_rows(self.flipped_to_positive, indices, self.mode, logits)
        flipped_before = labels.unannotated & (stored == 1)
        terms, selected = self.large_loss_terms(logits, labels.positive | flipped_before,
                                                labels.unannotated & ~flipped_before, epoch)
        if selected is not None:
            rows, classes = selected.nonzero(as_tuple=True)
            sample = torch.as_tensor(indices).reshape(-1).to(rows.device, torch.long)[rows]
            positions = sample * logits.shape[1] + classes
            apply_store_updates(self.flipped_to_positive, positions, torch.ones_like(positions))
        return terms, None
