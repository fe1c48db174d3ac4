"""GR-Loss of Chen et al. (IJCAI 2024; github.com/yan4xi1/GRLoss). With p = sigmoid(x), p' = p detached:

    positive:      -log(p + 1e-7)
    un-annotated:  V(p') [ K(p') (1 - p^q2) / q2  +  (1 - K(p')) (1 - (1 - p)^q3) / q3 ]     (q2 0.01, q3 1)
                   K(p) = sigmoid(w p + b),  V(p) = exp(-(p - mu)^2 / (2 sigma^2))

Their train.py moves w and b linearly with (e - 1) / T (w 0 -> 2, b -2 -> -2), mu and sigma with e / T
(mu 0.5 -> 0.8, sigma 2 -> 0.5). p^q2 is exp(q2 logsigmoid(x)): a finite gradient where p underflows
(their pow(p, 0.01) has an infinite one). Known negatives get -log(1 - p) (our adaptation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from src.loss_functions.peer_base import Labels, PeerLoss, entrywise, require_epoch

GR_LOG_EPSILON = 1e-7  # their neg_log(x) = -log(x + 1e-7)


class GeneralizedRobustLoss(PeerLoss):
    mode = "gr"
    bounds = {name: "> 0" for name in ("gr_q2", "gr_q3", "gr_sigma_start", "gr_sigma_end")}

    def __init__(self, *, gr_q2: float = 0.01, gr_q3: float = 1.0, gr_w_start: float = 0.0,
                 gr_w_end: float = 2.0, gr_b_start: float = -2.0, gr_b_end: float = -2.0,
                 gr_mu_start: float = 0.5, gr_mu_end: float = 0.8, gr_sigma_start: float = 2.0,
                 gr_sigma_end: float = 0.5, reduction: str = "sum"):
        super().__init__(reduction=reduction, gr_q2=gr_q2, gr_q3=gr_q3, gr_w_start=gr_w_start,
                         gr_w_end=gr_w_end, gr_b_start=gr_b_start, gr_b_end=gr_b_end, gr_mu_start=gr_mu_start,
                         gr_mu_end=gr_mu_end, gr_sigma_start=gr_sigma_start, gr_sigma_end=gr_sigma_end)
        self.schedule_ends = {name: (self.settings[f"gr_{name}_start"], self.settings[f"gr_{name}_end"])
                              for name in ("w", "b", "mu", "sigma")}

    def schedule(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """w, b, mu, sigma during ``epoch`` (1-based) of ``num_epochs`` (module docstring)."""
        progress = {"w": max(epoch - 1, 0) / num_epochs, "b": max(epoch - 1, 0) / num_epochs,
                    "mu": max(epoch, 0) / num_epochs, "sigma": max(epoch, 0) / num_epochs}
        return {name: start + (end - start) * progress[name]
                for name, (start, end) in self.schedule_ends.items()}

    def loss_terms(self, logits: Tensor, labels: Labels, *, epoch, num_epochs, **_) -> tuple[Tensor, None]:
        epoch = require_epoch(self.mode, epoch, num_epochs, need_total=True)
        values = self.schedule(epoch, int(num_epochs))
        p = torch.sigmoid(logits)
        with torch.no_grad():  # K and V of the detached p: weights V K and V (1 - K), no gradient
            k = torch.sigmoid(values["w"] * p + values["b"])
            v = torch.exp(-0.5 * ((p - values["mu"]) / values["sigma"]) ** 2)
            weight_positive_like, weight_negative_like = v * k, v * (1 - k)
        q2, q3 = self.gr_q2, self.gr_q3
        log_q = F.logsigmoid(-logits)  # log(1 - p)
        positive_like = (1 - torch.exp(q2 * F.logsigmoid(logits))) / q2  # (1 - p^q2) / q2
        # (1 - (1 - p)^q3) / q3, which is p itself at their q3 = 1.
        negative_like = p if q3 == 1 else (1 - torch.exp(q3 * log_q)) / q3
        unannotated = weight_positive_like * positive_like + weight_negative_like * negative_like
        positive = -torch.log(p + GR_LOG_EPSILON)
        return entrywise(labels, logits, positive, unannotated, negative_term=-log_q), None
