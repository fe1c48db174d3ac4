"""Per-sample label stores (N, C) of LL-Cp and EM-APL: buffers of the loss module, so they travel with
``criterion.state_dict()`` into every checkpoint. Under torchrun every rank's updates are all_gathered and
written on every rank (:func:`apply_store_updates`), so the stores stay identical.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from src.utils.distributed import is_dist


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def new_label_store(mode: str, num_samples, num_classes, dtype: torch.dtype, fill) -> Tensor:
    """Refused (MemoryError) above half of the physical memory: the rest is the data's, model's, loaders'."""
    if num_samples is None or num_classes is None or int(num_samples) < 1 or int(num_classes) < 1:
        raise ValueError(f"loss mode {mode!r} keeps a per-sample label store: pass num_samples=N (training "
                         f"images) and num_classes=C (both >= 1), got num_samples={num_samples!r}, "
                         f"num_classes={num_classes!r}")
    rows, columns = int(num_samples), int(num_classes)
    needed = rows * columns * torch.empty((), dtype=dtype).element_size()
    limit = physical_memory_bytes() // 2
    if needed > limit:
        raise MemoryError(f"loss mode {mode!r}: its per-sample label store of N={rows} images x "
                          f"C={columns} classes ({dtype}) needs {needed} bytes ({needed / 2**30:.1f} GiB), "
                          f"more than half of this machine's physical memory ({limit} of {2 * limit} bytes); "
                          "use another loss mode or a subset of the training set")
    return torch.full((rows, columns), fill, dtype=dtype)


def store_rows(store: Tensor, indices: Tensor | None, mode: str, logits: Tensor) -> Tensor:
    batch_size, num_classes = logits.shape
    if num_classes != store.shape[1]:
        raise ValueError(f"the store was built for {store.shape[1]} classes, the logits have {num_classes}")
    if indices is None:
        raise ValueError(f"loss mode {mode!r} keeps a per-sample label store: call it with indices= (the "
                         "batch's dataset indices, a LongTensor)")
    indices = torch.as_tensor(indices).reshape(-1)
    if indices.numel() != batch_size:
        raise ValueError(f"indices holds {indices.numel()} dataset indices for a batch of {batch_size}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= store.shape[0]):
        raise ValueError(f"indices must lie in [0, {store.shape[0]}) (the store was built for num_samples="
                         f"{store.shape[0]}), got values in [{int(indices.min())}, {int(indices.max())}]")
    return store.index_select(0, indices.to(store.device, torch.long)).to(logits.device)


@torch.no_grad()
def apply_store_updates(store: Tensor, positions: Tensor, values: Tensor) -> int:
    """Write ``values`` at the flat ``positions`` (row * C + class), every rank's under a process group (a
    collective); returns how many entries were written."""
    positions = positions.reshape(-1).to(torch.int64)
    values = values.reshape(-1)
    if is_dist():  # ranks may send different counts
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (positions.cpu(), values.cpu()))
        positions, values = torch.cat([p for p, _ in gathered]), torch.cat([v for _, v in gathered])
    if positions.numel():
        store.view(-1)[positions.to(store.device)] = values.to(store.device, store.dtype)
    return int(positions.numel())
