"""The one .pth reader (`read_pth`), the training checkpoint's check, and where a resumed run continues.
Layout (docs/checkpoints.md; written by `src.utils.io.atomic_torch_save`, loadable with ``weights_only``):
``model``, ``ema``, the architecture fields of `src.models.model_metadata`, ``class_names``, ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (from 1, ``format_version`` 2; `ResumePoint` holds the 0-based index),
``steps_done`` (in that epoch: fewer than its length for a mid-epoch SIGTERM checkpoint),
``epoch_loss_sum``, ``rng_state``, ``criterion``, ``train_prior``, ``history``, ``best``, ``args`` (a dict),
``data``, ``world_size``."""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from src.utils.cli import ConfigError

TRAINING_CHECKPOINT_KEYS = ("model", "ema", "optimizer", "scheduler", "epoch", "steps_done", "args")


@dataclass
class ResumePoint:
    """Where a run continues: epoch index, optimizer steps done in it, their loss sum, and the RNG state to
    restore once those steps have been replayed (None at an epoch boundary)."""

    epoch: int = 0
    steps_done: int = 0
    loss_sum: float = 0.0
    rng_state: dict | None = None

    def within(self, epoch: int) -> ResumePoint:
        return self if epoch == self.epoch and self.steps_done > 0 else ResumePoint(epoch=epoch)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, steps_per_epoch: int) -> ResumePoint:
        point = cls(checkpoint["epoch"], checkpoint["steps_done"], checkpoint["epoch_loss_sum"],
                    checkpoint["rng_state"])
        # An end-of-epoch checkpoint: continue with the next epoch (unless saved before its evaluation).
        if point.steps_done >= steps_per_epoch and not checkpoint.get("evaluation_pending"):
            return cls(epoch=point.epoch + 1)
        return point


class CheckpointError(ConfigError):
    """A file that is not a usable checkpoint, or does not fit the requested model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist (catchable as FileNotFoundError or ValueError)."""


def _numpy_scalar_globals() -> list:
    """What ``weights_only`` needs for numpy scalars (``num_classes`` saved as ``np.int64``), under numpy 1.x
    and 2.x names. None can run code: ``scalar(dtype, bytes)`` only reinterprets bytes of a numeric dtype."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    codes = "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]
    dtype_classes = list(dict.fromkeys(type(np.dtype(code)) for code in codes))
    return [np.dtype, *dtype_classes, (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar")]


# Allowed on top of weights_only's tensors, containers and numbers: training scripts store their args.
SAFE_CHECKPOINT_GLOBALS = [argparse.Namespace, *_numpy_scalar_globals()]
_ALLOWED_NAMES = {item[1] if isinstance(item, tuple) else f"{item.__module__}.{item.__qualname__}"
                  for item in SAFE_CHECKPOINT_GLOBALS}
_EXPECTED = 'expected a file written by torch.save holding a state_dict or a dict with a "model" state_dict'


def _refused_globals(path: str, error: Exception) -> list[str]:
    found = re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))
    try:  # every disallowed global of the file, not only the first one (zip-format files only)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path) or found
    except Exception:  # noqa: BLE001 - best effort: the message works without the full list
        pass
    return [name for name in found if name not in _ALLOWED_NAMES]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _check_zip_directory(path: str, where: str) -> None:
    """torch.save stores its members uncompressed, so none can be larger than the file: a compressed member
    or a size beyond the file's is a crafted archive that would cost memory when unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError):  # truncated: torch.load's own error below names it
        return
    size = os.path.getsize(path)
    for member in members:
        if member.file_size > size:
            why = f"claims {member.file_size} bytes in a {size}-byte file"
        elif member.compress_type != zipfile.ZIP_STORED:
            why = "is compressed, which torch.save never writes"
        else:
            continue
        raise CheckpointError(f"{where} was not loaded: its member {member.filename!r} {why}; pass a "
                              "checkpoint written by torch.save (train.py's best.pth, a released model)")


def read_pth(path, *, allow_pickle: bool = False, flag: str | None = None):
    """The one reader of .pth files: ``torch.load`` on CPU with ``weights_only=True`` plus
    ``SAFE_CHECKPOINT_GLOBALS``. Other Python objects need full unpickling, which can execute code: refused
    unless ``allow_pickle``. Every failure is a `CheckpointError` naming ``flag`` and the file."""
    path = os.fspath(path)
    where = f"{flag}: {path!r}" if flag else repr(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint file not found: {path!r} (expected a .pth file written by "
                                      f"torch.save; check {flag or '--model-path'})")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{where} is empty (0 bytes): a copy or download that did not finish")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive (new format) or a pickle starting with the protocol opcode 0x80.
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):
        raise CheckpointError(f"{where} is not a readable torch file (starts with {magic!r}); {_EXPECTED}")
    if magic.startswith(b"PK"):  # the legacy format (a bare pickle) has no directory to check
        _check_zip_directory(path, where)
    try:
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise CheckpointError(f"{where} is not a readable torch file ({_first_line(error)}); "
                                  f"{_EXPECTED}") from None
        if not allow_pickle:
            objects = _refused_globals(path, error) or ["objects other than tensors and plain containers"]
            raise CheckpointError(
                f"{where} was not loaded: it holds Python objects ({', '.join(objects[:5])}) whose "
                "unpickling can execute code embedded in the file. If you trust its source, pass "
                "--unsafe_pickle (allow_pickle=True); otherwise re-save its state_dict with torch.save"
            ) from None
    except Exception as error:  # zip/format errors, EOFError of a truncated file...: not a torch.save file
        raise CheckpointError(f"{where} is not a readable torch file (truncated or not written by "
                              f"torch.save: {type(error).__name__}: {_first_line(error)})") from error
    warnings.warn(f"{path!r} holds arbitrary Python objects; loading it with weights_only=False because of "
                  "--unsafe_pickle (allow_pickle=True): only do this for files you trust", stacklevel=2)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{where} could not be unpickled ({type(error).__name__}: {error})") from error


def recorded_args(checkpoint) -> dict:
    """train.py's flags stored under ``args`` (a Namespace in older files); {} for the paper's files."""
    saved = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if isinstance(saved, argparse.Namespace):
        saved = vars(saved)
    return dict(saved) if isinstance(saved, dict) else {}


def load_training_checkpoint(path: str, allow_pickle: bool = False) -> dict:
    checkpoint = read_pth(path, allow_pickle=allow_pickle, flag="--resume")
    if isinstance(checkpoint, dict) and "batches_done" in checkpoint and "steps_done" not in checkpoint:
        checkpoint["steps_done"] = checkpoint.pop("batches_done")  # the name before 2026-11-30
    missing = [key for key in TRAINING_CHECKPOINT_KEYS
               if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"--resume: {path!r} is not a training checkpoint of train.py (missing {missing}); "
                         "resume from <path_dest>/last.pth, or use --model-path for pretrained weights")
    return checkpoint
