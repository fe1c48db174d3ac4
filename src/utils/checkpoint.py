"""The training checkpoint: its layout, the checked reader, and the point a resumed run continues from.

Layout (a dict saved with ``torch.save``; loadable with ``weights_only=True``):

- ``model``: state dict of the trained network (for ``best.pth``: the weights of the selected
  variant, regular or EMA, see ``selected_variant``); ``ema``: state dict of the EMA network;
- ``model_name``, ``num_classes``, ``do_bottleneck_head``, ``bottleneck_features``,
  ``boostlu_alpha`` (None without BoostLU), ``class_names`` (so :func:`src.models.load_model` rebuilds
  the network);
- ``optimizer``, ``scheduler``, ``scaler``: their ``state_dict()``;
- ``epoch``: the epoch the state belongs to, counted from 1 as in ``history`` and ``best``
  (``format_version`` 2; `src.trainer.count_epochs_from_one` converts older, 0-based files; `ResumePoint`
  holds the 0-based index); ``steps_done``: optimizer steps done in that epoch (the epoch length for an
  end-of-epoch checkpoint, fewer for a mid-epoch SIGTERM checkpoint);
  ``epoch_loss_sum``: loss summed over those steps; ``rng_state``: `src.utils.seed.capture_rng_state`;
- ``train_prior``: ``ComputePrior.reduced_state_dict()`` of the running-average prior, or None;
- ``history``: per-epoch records (as in metrics.jsonl); ``best``: best selection metric and its epoch;
  ``args``: the resolved configuration (a dict); ``world_size``.

Files are written atomically (`src.utils.io.atomic_torch_save`): a process killed mid-write leaves the
previous file intact.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass

import torch

from src.utils.io import atomic_torch_save

TRAINING_CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "epoch", "steps_done", "args")


@dataclass
class ResumePoint:
    """Where a run continues: epoch index, optimizer steps already done in it, their loss sum, and the
    global RNG state to restore once those steps have been replayed (None at an epoch boundary)."""

    epoch: int = 0
    steps_done: int = 0
    loss_sum: float = 0.0
    rng_state: dict | None = None

    def within(self, epoch: int) -> ResumePoint:
        """The resume point that applies to ``epoch``: this one for its own epoch, a fresh start else."""
        return self if epoch == self.epoch and self.steps_done > 0 else ResumePoint(epoch=epoch)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, steps_per_epoch: int) -> ResumePoint:
        point = cls(checkpoint["epoch"], checkpoint["steps_done"], checkpoint["epoch_loss_sum"],
                    checkpoint["rng_state"])
        if point.steps_done >= steps_per_epoch:  # an end-of-epoch checkpoint: continue with the next
            return cls(epoch=point.epoch + 1)
        return point


def save_checkpoint(state: dict, path: str) -> str:
    """Write ``state`` atomically to ``path`` (the layout of the module docstring)."""
    return atomic_torch_save(state, path)


def read_torch_file(path: str, flag: str) -> object:
    """``torch.load(path, weights_only=True)`` on CPU; any unreadable file (empty, truncated, not written
    by torch.save, or holding objects other than tensors and plain containers) is a ValueError naming
    ``flag``, the file and the reason, never a raw torch traceback."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{flag}: {path!r} is empty (0 bytes): a copy or download that did not finish")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else is not its file
            raise ValueError(f"{flag}: {path!r} is not a readable torch file (not written by torch.save: "
                             f"{_first_line(error)})") from error
        raise ValueError(f"{flag}: {path!r} holds objects that a safe load refuses ({_first_line(error)})"
                         ) from error
    except Exception as error:  # any parse failure (EOFError, zip/miniz errors, IndexError...): unreadable
        raise ValueError(f"{flag}: {path!r} is not a readable torch file (truncated or not written by "
                         f"torch.save: {type(error).__name__}: {_first_line(error)})") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_training_checkpoint(path: str) -> dict:
    """Load a checkpoint written by train.py (on CPU); a clear error when it is not one."""
    checkpoint = read_torch_file(path, "--resume")
    if isinstance(checkpoint, dict) and "batches_done" in checkpoint and "steps_done" not in checkpoint:
        checkpoint["steps_done"] = checkpoint.pop("batches_done")  # the name before 2026-11-30
    missing = [key for key in TRAINING_CHECKPOINT_KEYS
               if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"--resume: {path!r} is not a training checkpoint of train.py (missing {missing}); "
                         "resume from <path_dest>/last.pth, or use --model-path for pretrained weights")
    return checkpoint
