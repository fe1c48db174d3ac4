"""Seeds and random-generator state: what makes runs reproducible and resumes exact."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed from ``seed`` and ``parts`` (e.g. epoch, rank); unlike seed + epoch, run seed=1 epoch 0
    and run seed=0 epoch 1 get unrelated streams (numpy's SeedSequence mixes the entropy)."""
    return int(np.random.SeedSequence([int(seed), *(int(p) for p in parts)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """The global generators' states as plain values and tensors (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
