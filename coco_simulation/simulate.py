"""The paper code's import path of the simulation (`src.data.partial_labels`)."""

from __future__ import annotations

from src.data.partial_labels import describe_simulation, simulate_dataset
from src.utils.distributed import get_rank


def simulate_coco(args, dataset):
    """Simulate in place from ``args``' simulation flags (type None: none); rank 0 reports the draw."""
    mode = getattr(args, "simulate_partial_type", None)
    if mode is None:
        return dataset
    param = getattr(args, "simulate_partial_param", None)
    seed = getattr(args, "seed", None) or 0
    summary = simulate_dataset(dataset, mode, param, seed)
    if get_rank() == 0:  # every DDP rank draws the same labels (same seed); one of them reports it
        print(describe_simulation(mode, param, seed, summary))
    return dataset
