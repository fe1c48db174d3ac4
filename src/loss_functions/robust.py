"""Hill and SPLC of Zhang et al. (arXiv 2112.07368; github.com/xinyu1205/robust-loss-mlml), sums in
their code. With p = sigmoid(x), margin m, focusing gamma (weights with gradient, unlike CSL's):

    hill   positive: -(1 - p_m)^gamma log(p_m), p_m = sigmoid(x - m)  (m 1, gamma 2)
           un-annotated: (lambda - p) p^2  (lambda 1.5)
    splc   positive: as hill; un-annotated: -p^gamma log(1 - p), or, from splc_start_epoch (2) on and when
           p > tau (0.6), a positive for that batch without the margin: -(1 - p)^gamma log(p)

Known negatives get -log(1 - p), never relabelled (ours). log(sigmoid) is logsigmoid: the official values
where those are finite, no -inf where they underflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from src.loss_functions.peer_base import Labels, PeerLoss, entrywise, require_epoch


class HillLoss(PeerLoss):
    mode, bounds = "hill", {"hill_lambda": ">= 0", "hill_margin": ">= 0", "hill_gamma": ">= 0"}

    def __init__(self, *, hill_lambda: float = 1.5, hill_margin: float = 1.0, hill_gamma: float = 2.0,
                 reduction: str = "sum"):
        super().__init__(reduction=reduction, hill_lambda=hill_lambda, hill_margin=hill_margin,
                         hill_gamma=hill_gamma)

    def loss_terms(self, logits: Tensor, labels: Labels, **_) -> tuple[Tensor, None]:
        shifted = logits - self.hill_margin
        positive = -torch.pow(1 - torch.sigmoid(shifted), self.hill_gamma) * F.logsigmoid(shifted)
        p = torch.sigmoid(logits)
        unannotated = (self.hill_lambda - p) * p * p
        return entrywise(labels, logits, positive, unannotated), None


class SPLCLoss(PeerLoss):
    mode = "splc"
    bounds = {"splc_tau": "in [0, 1]", "splc_margin": ">= 0", "splc_gamma": ">= 0",
              "splc_start_epoch": "an integer >= 1"}

    def __init__(self, *, splc_tau: float = 0.6, splc_margin: float = 1.0, splc_gamma: float = 2.0,
                 splc_start_epoch: int = 2, reduction: str = "sum"):
        super().__init__(reduction=reduction, splc_tau=splc_tau, splc_margin=splc_margin,
                         splc_gamma=splc_gamma, splc_start_epoch=splc_start_epoch)

    def loss_terms(self, logits: Tensor, labels: Labels, *, epoch, **_) -> tuple[Tensor, None]:
        epoch = require_epoch(self.mode, epoch)
        # The margin goes on the annotated positives first; entries relabelled below keep their logit.
        shifted = torch.where(labels.positive, logits - self.splc_margin, logits)
        positive = labels.positive
        if epoch >= self.splc_start_epoch:
            with torch.no_grad():
                positive = positive | (labels.unannotated & (torch.sigmoid(shifted) > self.splc_tau))
        # With z = x' on positives and -x' elsewhere (x' the shifted logit), every entry's log-likelihood
        # is log sigmoid(z) and its focusing base sigmoid(-z): (1 - p) on positives, p on un-annotated
        # entries; known negatives (x' = x) keep the plain -log(1 - p), without focusing. One log and
        # one sigmoid per entry, both accurate in the tails.
        z = torch.where(positive, shifted, -shifted)
        focusing = torch.where(labels.negative, 1.0, torch.pow(torch.sigmoid(-z), self.splc_gamma))
        return -focusing * F.logsigmoid(z), None
