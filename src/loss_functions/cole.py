"""AN-LS and EPR of Cole et al. (CVPR 2021; github.com/elijahcole/single-positive-multi-label). With
p = sigmoid(x) and their guard log(x + 1e-5); known negatives get -log(1 - p) (our adaptation):

    an_ls  positive: -(1 - s) log(p + eps) - s log(1 - p + eps)    (s = an_ls_smoothing, 0.1)
           un-annotated: -(1 - s) log(1 - p + eps) - s log(p + eps)
    epr    positive: -log(p + eps); un-annotated: 0; plus (mean_b sum_c p_bc - E)^2 / C^2 outside the mean
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from src.loss_functions.peer_base import Labels, PeerLoss, entrywise

COLE_LOG_EPSILON = 1e-5  # their neg_log(x) = -log(x + 1e-5)


class AssumeNegativeLabelSmoothing(PeerLoss):
    mode, bounds = "an_ls", {"an_ls_smoothing": "in [0, 1)"}

    def __init__(self, *, an_ls_smoothing: float = 0.1, reduction: str = "sum"):
        super().__init__(reduction=reduction, an_ls_smoothing=an_ls_smoothing)

    def loss_terms(self, logits: Tensor, labels: Labels, **_) -> tuple[Tensor, None]:
        p = torch.sigmoid(logits)
        log_p = torch.log(p + COLE_LOG_EPSILON)
        log_q = torch.log(1 - p + COLE_LOG_EPSILON)
        s = self.an_ls_smoothing
        positive = -(1 - s) * log_p - s * log_q
        unannotated = -(1 - s) * log_q - s * log_p
        return entrywise(labels, logits, positive, unannotated), None


class ExpectedPositiveRegularizer(PeerLoss):
    mode, bounds = "epr", {"epr_expected_positives": ">= 0"}

    def __init__(self, *, epr_expected_positives: float = 2.9, reduction: str = "sum"):
        super().__init__(reduction=reduction, epr_expected_positives=epr_expected_positives)

    def loss_terms(self, logits: Tensor, labels: Labels, **_) -> tuple[Tensor, Tensor]:
        p = torch.sigmoid(logits)
        positive = -torch.log(p + COLE_LOG_EPSILON)
        terms = entrywise(labels, logits, positive, torch.zeros_like(p))
        num_classes = logits.shape[1]
        regulariser = (p.sum(dim=1).mean(dim=0) - self.epr_expected_positives) ** 2 / num_classes**2
        return terms, regulariser


def expected_positives_per_image(positive_counts, negative_counts, num_samples: int) -> float:
    """EPR's E from per-class counts (C,): the sum of the classes' positive rates, over the images annotated
    for the class when it has known negatives, else over all (a lower bound). Complete labels give the mean
    positives per image (2.9 on COCO); labels missing at random (RPS) an unbiased estimate of it. Not valid
    for FPC (n positives and n negatives per class: every class counts 0.5) or single positives (1)."""
    positives = np.asarray(positive_counts, dtype=np.float64)
    negatives = np.asarray(negative_counts, dtype=np.float64)
    if num_samples < 1:
        raise ValueError(f"expected positives need at least one training image, got {num_samples}")
    denominators = np.where(negatives > 0, positives + negatives, float(num_samples))
    return float(np.sum(positives / denominators))
