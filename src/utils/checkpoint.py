"""Training checkpoints: atomic writes and the RNG state needed for an exact resume.

Checkpoint format (a dict saved with ``torch.save``; loadable with ``weights_only=True``):

- ``model``: state dict of the trained network (for ``best.pth``: the weights of the selected
  variant, regular or EMA, see ``selected_variant``); ``ema``: state dict of the EMA network;
- ``model_name``, ``num_classes``, ``do_bottleneck_head``, ``bottleneck_features``,
  ``class_names`` (so :func:`src.models.load_model` rebuilds the network);
- ``optimizer``, ``scheduler``, ``scaler``: their ``state_dict()``;
- ``epoch``: index of the epoch the state belongs to; ``batches_done``: number of optimizer steps
  done in that epoch (equal to the epoch length for an end-of-epoch checkpoint, smaller for a
  mid-epoch SIGTERM checkpoint); ``epoch_loss_sum``: loss summed over those steps;
- ``rng_state``: :func:`capture_rng_state` (python, numpy, torch CPU and CUDA generators);
- ``train_prior``: state of the running-average prior (:class:`src.loss_functions.ComputePrior`);
- ``history``: list of per-epoch metric dicts (as in metrics.jsonl), ``best``: best selection
  metric so far and its epoch; ``args``: the resolved configuration (a dict); ``world_size``.

Every file is written to ``<path>.tmp.<pid>`` first and then moved over ``path`` with
``os.replace`` (atomic on POSIX), so a process killed mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch


def atomic_torch_save(obj, path: str) -> str:
    """``torch.save`` to a temp file next to ``path``, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str, text: str, newline: str | None = None) -> str:
    """Write ``text`` (UTF-8) to a temp file next to ``path``, then rename it over ``path``; the folder
    is created. ``newline`` is passed to ``open`` (``""`` writes line endings as given, e.g. the
    ``\\r\\n`` of the csv module). On any error the temp file is removed and ``path`` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline=newline) as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_json(path: str, payload) -> str:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def capture_rng_state() -> dict:
    """The global generators' states, as plain Python values and tensors (weights_only-loadable)."""
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
    """Inverse of :func:`capture_rng_state` (the CUDA part only when CUDA is in use)."""
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


def derive_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed that is a fixed function of ``seed`` and ``parts`` (e.g. epoch, rank).

    numpy's SeedSequence mixes the entropy well, so (seed, epoch) and (seed, epoch + 1) give
    unrelated streams, unlike seed + epoch which makes run seed=1 epoch 0 equal run seed=0 epoch 1.
    """
    return int(np.random.SeedSequence([int(seed), *(int(p) for p in parts)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_training_checkpoint(path: str) -> dict:
    """Load a checkpoint written by train.py (on CPU); a clear error when it is not one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: checkpoint {path!r} does not exist; pass the last.pth of a run "
                                "(<path_dest>/last.pth)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in ("model", "ema", "optimizer", "scheduler", "epoch", "batches_done", "args")
               if key not in checkpoint]
    if missing:
        raise ValueError(f"--resume: {path!r} is not a training checkpoint of train.py (missing {missing}); "
                         "resume from <path_dest>/last.pth, or use --model-path for pretrained weights")
    return checkpoint
