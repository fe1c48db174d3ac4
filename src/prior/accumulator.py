"""`ComputePrior`: the paper's running mean of the sigmoid predictions per class, fed the training batches
(``--estimate_prior running_average``) or the clean pass. Its state (C float64 sums and a count) is saved,
resumed and summed over ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from src.utils.distributed import all_reduce_sum, is_dist


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps the running sums exact enough over millions of images; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class ComputePrior:
    """``classes``: the names, or a mapping whose values are the names (as the paper's code)."""

    def __init__(self, classes: Sequence[str] | Mapping):
        names = list(classes.values()) if isinstance(classes, Mapping) else list(classes)
        if not names:
            raise ValueError("ComputePrior needs at least one class name")
        self.classes = [str(name) for name in names]
        self._sums: torch.Tensor | None = None
        self.count = 0  # images (rows of logits) accumulated

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def avg_pred_train(self) -> torch.Tensor | None:
        """Mean prediction per class, float32 (C,); None before the first image."""
        if self.count == 0:
            return None
        return (self._sums / self.count).float()

    def update(self, logits: torch.Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"ComputePrior.update expects logits of shape (batch, {self.num_classes}); "
                             f"got {tuple(logits.shape)}")
        with torch.no_grad():
            dtype = _accumulator_dtype(logits.device)
            sums = torch.zeros(self.num_classes, dtype=dtype) if self._sums is None else self._sums
            self._sums = sums.to(logits.device, dtype) + torch.sigmoid(logits.float()).sum(dim=0).to(dtype)
            self.count += logits.shape[0]

    def state_dict(self) -> dict:
        """``{"sums": float64 CPU tensor (C,), "count": int}`` (a copy; zeros before the first update)."""
        if self._sums is None:
            sums = torch.zeros(self.num_classes, dtype=torch.float64)
        else:
            sums = self._sums.detach().to("cpu", torch.float64, copy=True)
        return {"sums": sums, "count": int(self.count)}

    def load_state_dict(self, state: Mapping) -> None:
        missing = [key for key in ("sums", "count") if key not in state]
        if missing:
            raise ValueError(f"ComputePrior.load_state_dict: the state lacks {missing}; expected the dict of "
                             f"ComputePrior.state_dict() with keys 'sums' and 'count', got {sorted(state)}")
        sums = torch.as_tensor(state["sums"]).detach()
        if sums.shape != (self.num_classes,):
            raise ValueError(f"ComputePrior.load_state_dict: sums of shape {tuple(sums.shape)} for "
                             f"{self.num_classes} classes; the state was saved for another class list")
        count = int(state["count"])
        if count < 0:
            raise ValueError(f"ComputePrior.load_state_dict: count must be >= 0, got {count}")
        self._sums = sums.to("cpu", torch.float64, copy=True)
        self.count = count

    def reduced_state_dict(self) -> dict:
        """The :meth:`state_dict` summed over all ranks, ``self`` unchanged; a collective."""
        state = self.state_dict()
        if not is_dist():
            return state
        # One float64 message: the C sums and the count (exact as float64 up to 2**53 images).
        packed = all_reduce_sum(torch.cat([state["sums"], torch.tensor([float(state["count"])],
                                                                         dtype=torch.float64)]))
        return {"sums": packed[:self.num_classes].clone(), "count": int(round(packed[-1].item()))}

    def all_reduce(self) -> None:
        """Sum over all ranks in place; once, after the last update (a second call counts twice)."""
        if not is_dist():
            return
        device = self._sums.device if self._sums is not None else torch.device("cpu")
        state = self.reduced_state_dict()
        self._sums = state["sums"].to(device, _accumulator_dtype(device))
        self.count = state["count"]
