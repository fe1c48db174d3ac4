"""Process-group helpers for single-process and ``torchrun`` runs (no-ops without a process group).
Evaluation sharding: :class:`ShardSampler` gives each rank a contiguous run of whole batches, without the
padding of ``DistributedSampler`` (repeated samples would count twice in the mAP); gathered in rank order,
every image is forwarded in the same batch as in one process, so predictions are bitwise identical to it."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistributedContext:

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} was requested but CUDA is not available; use --device cpu")
    return device


def init_distributed(device_name: str = "auto", timeout_s: float = 300) -> DistributedContext:
    """Join the process group (NCCL on CUDA, gloo on CPU) when launched by torchrun; a collective that waits
    over ``timeout_s`` for a rank (stopped, hung) fails instead of waiting for gloo's default 30 minutes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistributedContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _comm_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo only CPU ones."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks (a new tensor on the input's device)."""
    if not is_dist():
        return tensor.clone()
    work = tensor.detach().to(_comm_device()).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def any_rank_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a SIGTERM seen by one rank)."""
    if not is_dist():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0], device=device)).item() > 0)


def gather_objects(obj) -> list:
    if not is_dist():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


@torch.no_grad()
def broadcast_tensors(tensors, src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values: each rank's BatchNorm statistics (and EMA
    copy) drift apart under DDP, and rank 0's state is the one saved."""
    if not is_dist():
        return
    for tensor in tensors:
        work = tensor.detach().to(_comm_device())
        dist.broadcast(work, src=src)
        if work is not tensor:
            tensor.copy_(work.to(tensor.device))


def shard_bounds(num_samples: int, rank: int, world_size: int, batch_size: int = 1) -> tuple[int, int]:
    """Half-open index range of rank's shard: batches ``[r*nb//w, (r+1)*nb//w)`` of ``nb = ceil(N/B)``."""
    num_batches = -(-num_samples // batch_size)
    first, last = rank * num_batches // world_size, (rank + 1) * num_batches // world_size
    return min(first * batch_size, num_samples), min(last * batch_size, num_samples)


class ShardSampler(Sampler[int]):

    def __init__(self, num_samples: int, rank: int | None = None, world_size: int | None = None,
                 batch_size: int = 1):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.start, self.stop = shard_bounds(num_samples, self.rank, self.world_size, batch_size)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def gather_rows(local: torch.Tensor, num_total: int, batch_size: int = 1) -> torch.Tensor:
    """Every rank's ``local`` rows concatenated in rank order, on CPU (padded for all_gather)."""
    if not is_dist():
        if local.shape[0] != num_total:
            raise RuntimeError(f"predict: got {local.shape[0]} rows for a dataset of {num_total} samples")
        return local.cpu()
    world = dist.get_world_size()
    sizes = [len(ShardSampler(num_total, r, world, batch_size)) for r in range(world)]
    if local.shape[0] != sizes[dist.get_rank()]:
        raise RuntimeError(
            f"predict: rank {dist.get_rank()} produced {local.shape[0]} rows, expected "
            f"{sizes[dist.get_rank()]}; build the evaluation loader with src.engine.build_eval_loader"
        )
    max_rows = max(sizes)
    comm_device = _comm_device()
    padded = torch.zeros((max_rows, *local.shape[1:]), dtype=local.dtype, device=comm_device)
    padded[: local.shape[0]] = local.to(comm_device)
    buckets = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(buckets, padded)
    return torch.cat([bucket[:size].cpu() for bucket, size in zip(buckets, sizes)], dim=0)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
