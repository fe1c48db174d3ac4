"""Crash-safe writes (src/utils/io.py) and the checked checkpoint reader (src/utils/checkpoint.py)."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from src.utils import io as io_module
from src.utils.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    ResumePoint,
    load_training_checkpoint,
    read_pth,
)
from src.utils.io import OutputError, atomic_torch_save, atomic_write_text, remove_stale_temporaries


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    atomic_write_text(str(path), "old")

    def fail(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "replace", fail)
    with pytest.raises(OutputError, match="no space left on the device while writing .*out.txt"):
        atomic_write_text(str(path), "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_full_disk_during_torch_save_names_the_path(tmp_path, monkeypatch):
    def fail(obj, handle):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4800 vs 4672")

    monkeypatch.setattr(io_module.torch, "save", fail)
    with pytest.raises(OutputError, match=r"cannot write .*last.pth.*free disk space"):
        atomic_torch_save({"x": 1}, str(tmp_path / "last.pth"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("code, message", [
    (errno.EROFS, "cannot be written .*Read-only file system.*choose a writable folder"),
    (errno.EACCES, "cannot be written .*Permission denied.*choose a writable folder"),
])
def test_read_only_or_forbidden_folder_is_named(tmp_path, monkeypatch, code, message):
    # Root ignores permission bits, so the kernel's answer is simulated at the open() call.
    def refuse(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(io_module, "open", refuse, raising=False)
    with pytest.raises(OutputError, match=message):
        atomic_write_text(str(tmp_path / "a.txt"), "x")
    assert os.listdir(tmp_path) == []


def test_output_path_below_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="a path component is a file"):
        atomic_write_text(str(tmp_path / "file" / "a.txt"), "x")


def test_stale_temporaries_of_dead_processes_are_removed_at_the_next_save(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # that process has exited: its temporary is stale
    path = tmp_path / "last.pth"
    stale = tmp_path / f"last.pth.tmp.{dead_pid}"
    live = tmp_path / f"last.pth.tmp.{os.getppid()}"  # a running process (our parent) may still write
    other = tmp_path / f"best.pth.tmp.{dead_pid}"  # another file's temporary: not this save's business
    for leftover in (stale, live, other):
        leftover.write_bytes(b"partial")
    atomic_torch_save({"x": torch.ones(1)}, str(path))
    assert sorted(os.listdir(tmp_path)) == sorted(["last.pth", live.name, other.name])
    assert remove_stale_temporaries(str(tmp_path / "best.pth")) == [str(other)]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"not a torch file at all", "not a readable torch file"),
    (None, "not a readable torch file"),  # a real checkpoint cut in half
])
def test_unreadable_checkpoints_get_one_clear_error(tmp_path, content, message):
    path = tmp_path / "last.pth"
    if content is None:
        atomic_torch_save({"model": {"w": torch.randn(64, 64)}}, str(path))
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"--resume: .*last.pth.* {message}"):
        load_training_checkpoint(str(path))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, str(path))
    with pytest.raises(CheckpointError, match=r"--resume: .*evil.pth' was not loaded: it holds Python "
                                              r"objects \(posix.system\).*--unsafe_pickle"):
        read_pth(str(path), flag="--resume")


def test_the_one_reader_names_the_file_and_the_flag(tmp_path):
    """read_pth is the reader of every .pth (resume, validate, infer, the prior, backbones): a file that is
    not a checkpoint is refused with its name and the flag, as a ValueError and a FileNotFoundError."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"--model-path: '.*notes.txt' is not a readable torch file "
                                              r"\(starts with b'not '\)"):
        read_pth(notes, flag="--model-path")
    with pytest.raises(CheckpointNotFoundError, match=r"not found: .*gone.pth.*check --resume"):
        read_pth(tmp_path / "gone.pth", flag="--resume")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError) and issubclass(CheckpointError, ValueError)
    # numpy scalars (a num_classes saved as np.int64) and an argparse.Namespace of args are read safely
    torch.save({"num_classes": np.int64(3), "args": argparse.Namespace(image_size=32)}, tmp_path / "np.pth")
    loaded = read_pth(tmp_path / "np.pth")
    assert loaded["num_classes"] == 3 and loaded["args"].image_size == 32


def test_a_weights_file_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    atomic_torch_save({"model": {"w": torch.ones(1)}}, str(path))
    with pytest.raises(ValueError, match=r"not a training checkpoint of train.py \(missing \['ema'"):
        load_training_checkpoint(str(path))


def test_resume_point_from_mid_epoch_and_end_of_epoch_checkpoints():
    state = {"epoch": 2, "steps_done": 3, "epoch_loss_sum": 1.5, "rng_state": {"x": 1}}
    mid = ResumePoint.from_checkpoint(state, steps_per_epoch=6)
    assert (mid.epoch, mid.steps_done, mid.loss_sum, mid.rng_state) == (2, 3, 1.5, {"x": 1})
    assert mid.within(2) is mid and mid.within(3) == ResumePoint(epoch=3)
    end = ResumePoint.from_checkpoint({**state, "steps_done": 6}, steps_per_epoch=6)
    assert end == ResumePoint(epoch=3)
