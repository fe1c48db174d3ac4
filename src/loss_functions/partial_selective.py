"""CSL's partial-label asymmetric loss. Targets per (image, class): 1 positive, 0 negative, -1 un-annotated.
With p = sigmoid(x) and q = 1 - p (if clip > 0: q = min(q + clip, 1)):

    loss = -sum_ic w_ic f_ic alpha_ic log(max(l_ic, 1e-8)),   l = p on positives, q elsewhere
    f = (1 - l)^gamma (no gradient); alpha, gamma: the _pos, _neg or _unann value of the entry's label

and the mode weight w (no gradient): ``negative`` 1; ``ignore`` 0 on un-annotated entries;
``ignore_normalize_classes`` 0 on un-annotated entries, 1 + 1 / (1 + n_annotated(image)) elsewhere
(Durand et al. 2019); ``selective`` (CSL) 0 on the un-annotated entries of classes whose prior exceeds
``prior_threshold`` (given a prior and a non-zero threshold), then 0 on the k = int(likelihood_topk B)
un-annotated entries of the batch with the highest p (all of them when fewer; ties broken arbitrarily;
counted over all un-annotated entries, the prior's too), by torch.topk: a 128 x 9,605 batch is never sorted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.loss_functions.peer_base import Labels, PeerLoss

CSL_MODES = ("negative", "ignore", "ignore_normalize_classes", "selective")
PROBABILITY_FLOOR = 1e-8


class PartialSelectiveLoss(PeerLoss):
    """``prior``: the class prior (C,) of selective mode or None, a non-persistent buffer (the prior file,
    not the checkpoint, is its source). ``reduction`` 'mean' divides by B x C; the paper sums."""

    bounds = {"clip": "in [0, 1)", "likelihood_topk": ">= 0", "prior_threshold": "a probability in [0, 1]",
              **{f"{name}_{kind}": ">= 0" for name in ("gamma", "alpha") for kind in ("pos", "neg", "unann")}}

    def __init__(self, *, partial_loss_mode: str = "negative", prior: Tensor | None = None,
                 prior_threshold: float = 0.05, likelihood_topk: float = 5, clip: float = 0.0,
                 gamma_pos: float = 0.0, gamma_neg: float = 1.0, gamma_unann: float = 2.0,
                 alpha_pos: float = 1.0, alpha_neg: float = 1.0, alpha_unann: float = 1.0,
                 reduction: str = "sum"):
        if partial_loss_mode not in CSL_MODES:
            raise ValueError(f"partial_loss_mode {partial_loss_mode!r} is not supported; "
                             f"choose one of {list(CSL_MODES)}")
        super().__init__(reduction=reduction, clip=clip, gamma_pos=gamma_pos, gamma_neg=gamma_neg,
                         gamma_unann=gamma_unann, alpha_pos=alpha_pos, alpha_neg=alpha_neg,
                         alpha_unann=alpha_unann, likelihood_topk=likelihood_topk,
                         prior_threshold=prior_threshold)
        self.mode = self.partial_loss_mode = partial_loss_mode
        if prior is not None:
            prior = torch.as_tensor(prior).detach().to(torch.float32).clone()
            if prior.dim() != 1:
                raise ValueError(f"prior must hold one value per class (shape (C,)), got shape "
                                 f"{tuple(prior.shape)}")
        self.register_buffer("prior", prior, persistent=False)
        # A measurement, not part of the method: see record_ignored().
        self.ignored_recorder = None
        self._sample_indices = None

    def record_ignored(self, recorder) -> None:
        """Call ``recorder(samples, classes)`` (CPU int64) with the entries the top-k ignores in every batch
        (``samples``: the ``indices`` passed, else batch rows); ``None`` stops. The value is unchanged."""
        self.ignored_recorder = recorder

    def extra_repr(self) -> str:
        prior = "None" if self.prior is None else f"{self.prior.numel()} classes"
        return f"{super().extra_repr()}, prior={prior}"

    def loss_terms(self, logits: Tensor, labels: Labels, *, indices=None, **_) -> tuple[Tensor, None]:
        if self.prior is not None and self.prior.numel() != logits.shape[1]:
            raise ValueError(f"the prior has {self.prior.numel()} values but the logits have "
                             f"{logits.shape[1]} classes; use the prior computed for this dataset")
        self._sample_indices = indices
        positive, negative, unannotated = labels
        probs = torch.sigmoid(logits)
        probs_neg = 1.0 - probs
        if self.clip > 0:
            probs_neg = (probs_neg + self.clip).clamp(max=1.0)
        # The likelihood of the entry's own label: p on positives, q on negatives and un-annotated.
        likelihood = torch.where(positive, probs, probs_neg)
        log_likelihood = torch.log(likelihood.clamp(min=PROBABILITY_FLOOR))
        with torch.no_grad():
            weight = self._per_label(positive, negative, self.alpha_pos, self.alpha_neg, self.alpha_unann)
            if self.gamma_pos != 0 or self.gamma_neg != 0 or self.gamma_unann != 0:
                gamma = self._per_label(positive, negative, self.gamma_pos, self.gamma_neg, self.gamma_unann)
                weight = weight * torch.pow(1.0 - likelihood, gamma)
            mode_weight = self.mode_weights(probs, unannotated)
            if mode_weight is not None:
                weight = weight * mode_weight
        return -(weight * log_likelihood), None

    @staticmethod
    def _per_label(positive, negative, on_positive: float, on_negative: float, on_unannotated: float):
        return torch.where(positive, on_positive, torch.where(negative, on_negative, on_unannotated))

    def mode_weights(self, probs: Tensor, unannotated: Tensor) -> Tensor | None:
        """w (B, C), or None when it is 1 everywhere (called without gradient)."""
        if self.partial_loss_mode == "negative":
            return None
        annotated = ~unannotated
        if self.partial_loss_mode == "ignore":
            return annotated.float()
        if self.partial_loss_mode == "ignore_normalize_classes":
            n_annotated = annotated.sum(dim=1, keepdim=True, dtype=probs.dtype)
            return annotated.float() * (1.0 + 1.0 / (1.0 + n_annotated))
        if self.prior is not None and self.prior_threshold:
            if self.prior.device != probs.device:  # moved once, then kept on the logits' device
                self.prior = self.prior.to(probs.device)
            ignored_classes = self.prior > self.prior_threshold
            weights = (~(unannotated & ignored_classes.unsqueeze(0))).float()
        else:
            weights = torch.ones_like(probs)
        num_top_k = min(int(self.likelihood_topk * probs.shape[0]), probs.numel())
        if num_top_k > 0:
            # Annotated entries score -1, below every probability, so the top k are un-annotated
            # entries unless there are fewer than k of them; no host sync needed to count them.
            scores = probs.masked_fill(~unannotated, -1.0).flatten()
            top_scores, top_index = torch.topk(scores, num_top_k, sorted=False)
            flat_weights = weights.view(-1)
            flat_weights[top_index] = torch.where(top_scores >= 0, 0.0, flat_weights[top_index])
            if self.ignored_recorder is not None:
                chosen = top_index[top_scores >= 0].cpu()
                rows, classes = chosen // probs.shape[1], chosen % probs.shape[1]
                samples = rows if self._sample_indices is None else self._sample_indices.cpu()[rows]
                self.ignored_recorder(samples, classes)
        return weights
