"""EM and EM-APL of Zhou et al. (ECCV 2022; github.com/Correr-Zhou/SPML-AckTheUnknown), at their COCO
settings (alpha 0.1, beta 0.9, share 0.9, warm-up 5). With p = sigmoid(x), q = 1 - p, eps = 1e-5:

    em      positive: -log(p + eps);  un-annotated: -alpha H(p),  H(p) = -p log(p + eps) - q log(q + eps)
    em_apl  as em, but un-annotated entries with a pseudo-label s: beta (-s log(p + eps) - (1-s) log(q + eps))

After every epoch e >= warm-up (not the last: no epoch would use it) a pass over the training set gives,
per class c, the int(share U_c / (T - warm-up)) unlabelled un-annotated entries with the lowest p the
label s = p (U_c: the class's un-annotated entries). Buffer ``soft_negatives``: float16 (N, C), NaN =
no pseudo-label. Known negatives get -log(1 - p) and are never pseudo-labelled (our adaptation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.loss_functions.label_store import apply_store_updates, new_label_store, store_rows
from src.loss_functions.peer_base import Labels, PeerLoss, entrywise
from src.utils.distributed import get_rank, get_world_size

ZHOU_LOG_EPSILON = 1e-5  # their neg_log(x) = -log(x + 1e-5)


class EntropyMaximization(PeerLoss):
    mode, bounds = "em", {"em_alpha": ">= 0"}

    def __init__(self, *, em_alpha: float = 0.1, reduction: str = "sum"):
        super().__init__(reduction=reduction, em_alpha=em_alpha)

    def loss_terms(self, logits: Tensor, labels: Labels, **_) -> tuple[Tensor, None]:
        p = torch.sigmoid(logits)
        log_p = torch.log(p + ZHOU_LOG_EPSILON)
        log_q = torch.log(1 - p + ZHOU_LOG_EPSILON)
        negative_entropy = p * log_p + (1 - p) * log_q  # = -H(p)
        return entrywise(labels, logits, -log_p, self.em_alpha * negative_entropy), None


class EMAsymmetricPseudoLabeling(EntropyMaximization):
    """The trainer's contract, after training epoch ``e`` (1-based) of ``T``: if ``wants_training_pass(e,
    T)``, call ``update_from_training_pass(scores, targets, e, T)`` with the sigmoid scores (N, C) of every
    training image (eval mode, dataset order, the same on every rank; a collective under torchrun) and
    the original targets (N, C). Training batches pass ``indices=`` (their dataset indices)."""

    mode = "em_apl"
    bounds = {"em_alpha": ">= 0", "apl_beta": ">= 0", "apl_share": "in [0, 1]",
              "apl_warmup_epochs": "an integer >= 1"}

    def __init__(self, *, num_samples: int | None = None, num_classes: int | None = None,
                 em_alpha: float = 0.1, apl_beta: float = 0.9, apl_share: float = 0.9,
                 apl_warmup_epochs: int = 5, reduction: str = "sum"):
        PeerLoss.__init__(self, reduction=reduction, em_alpha=em_alpha, apl_beta=apl_beta,
                          apl_share=apl_share, apl_warmup_epochs=apl_warmup_epochs)
        self.register_buffer("soft_negatives", new_label_store(self.mode, num_samples, num_classes,
                                                               torch.float16, float("nan")))

    def wants_training_pass(self, epoch: int, num_epochs: int) -> bool:
        return self.apl_warmup_epochs <= int(epoch) < int(num_epochs)

    def loss_terms(self, logits: Tensor, labels: Labels, *, indices=None, **_) -> tuple[Tensor, None]:
        soft = store_rows(self.soft_negatives, indices, self.mode, logits).float()
        pseudo_labelled = ~torch.isnan(soft)
        p = torch.sigmoid(logits)
        log_p = torch.log(p + ZHOU_LOG_EPSILON)
        log_q = torch.log(1 - p + ZHOU_LOG_EPSILON)
        # Both un-annotated terms are w (t log(p + eps) + (1 - t) log(1 - p + eps)): EM with t = p and
        # w = alpha (-alpha H(p)), APL with the stored t = s and w = -beta (beta times the soft BCE).
        # One expression with a per-entry t and w costs half of computing both terms everywhere.
        t = torch.where(pseudo_labelled, soft, p)
        w = torch.where(pseudo_labelled, -self.apl_beta, self.em_alpha)
        unannotated = w * (t * log_p + (1 - t) * log_q)
        return entrywise(labels, logits, -log_p, unannotated), None

    @torch.no_grad()
    def update_from_training_pass(self, scores: Tensor, targets: Tensor, epoch: int, num_epochs: int) -> int:
        """Pseudo-label this epoch's share (module docstring); returns how many were labelled (all ranks)."""
        store = self.soft_negatives
        scores, targets = torch.as_tensor(scores), torch.as_tensor(targets)
        if tuple(scores.shape) != tuple(store.shape) or tuple(targets.shape) != tuple(store.shape):
            raise ValueError(f"scores and targets must be (N, C) = {tuple(store.shape)} in dataset order, "
                             f"got {tuple(scores.shape)} and {tuple(targets.shape)}")
        if not self.wants_training_pass(epoch, num_epochs):
            return 0
        scores = scores.to(store.device, torch.float32)
        if not bool(((scores >= 0) & (scores <= 1)).all()):
            raise ValueError("scores must be probabilities in [0, 1] (sigmoid of the logits), without NaN")
        unannotated = targets.to(store.device) == -1
        # int(share * U_c / (T - warm-up)) as their float arithmetic computes it.
        per_class = torch.floor(self.apl_share * unannotated.sum(0).double()
                                / (int(num_epochs) - self.apl_warmup_epochs)).long()
        rows, classes = _lowest_candidates(scores, unannotated & torch.isnan(store), per_class)
        mine = rows % get_world_size() == get_rank()  # each rank sends a share; the gather joins them
        rows, classes = rows[mine], classes[mine]
        return apply_store_updates(store, rows * store.shape[1] + classes, scores[rows, classes])


def _lowest_candidates(scores: Tensor, candidates: Tensor, per_class: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, classes) of the ``per_class[c]`` lowest-scoring candidates of each class c; classes are
    sorted a block at a time to bound memory."""
    num_rows, num_classes = scores.shape
    block = max(1, 2**24 // max(num_rows, 1))
    found_rows, found_classes = [], []
    for start in range(0, num_classes, block):
        stop = min(start + block, num_classes)
        masked = scores[:, start:stop].masked_fill(~candidates[:, start:stop], float("inf"))
        order = masked.argsort(dim=0, stable=True)
        rank = torch.arange(num_rows, device=scores.device).unsqueeze(1)
        take = (rank < per_class[start:stop].unsqueeze(0)) & candidates[:, start:stop].gather(0, order)
        columns = torch.arange(start, stop, device=scores.device).expand(num_rows, -1)
        found_rows.append(order[take])
        found_classes.append(columns[take])
    return torch.cat(found_rows), torch.cat(found_classes)
