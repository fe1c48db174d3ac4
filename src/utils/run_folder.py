"""Where a training run writes; a run never destroys another run's results.
``--path_dest`` unset: a fresh ``./outputs/<date>-<time>_<name>``. A ``--path_dest`` holding a run is refused
unless ``--resume`` continues a checkpoint of that very folder, or ``--overwrite`` is given, which removes
the old run's files first so that nothing of it (a stale best.pth, metrics.jsonl lines) mixes in. A folder
has one writer at a time (`lock_folder`)."""

from __future__ import annotations

import json
import os
import shutil
import time

from src.utils.cli import ConfigError
from src.utils.distributed import barrier, broadcast_object
from src.utils.io import existing_ancestor, lock_folder, unlock_folder
from src.utils.logging import METRICS_FILE, read_metrics

DEFAULT_PARENT = "./outputs"
RUN_FILES = ("args.json", METRICS_FILE, "last.pth", "best.pth")
RUN_FOLDERS = ("tensorboard",)  # priors/ stays: a stage-2 --prior_path may point into it


def fresh_run_folder(parent: str, name: str, now: float | None = None) -> str:
    """``parent/<YYYYmmdd-HHMMSS>_<name>``, suffixed -2, -3 ... when it exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = os.path.join(parent, f"{stamp}_{name}")
    candidate, n = base, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def describe_run(folder: str) -> str:
    try:
        with open(os.path.join(folder, "args.json"), encoding="utf-8") as handle:
            epochs_planned = json.load(handle).get("epochs")
    except (OSError, ValueError):
        epochs_planned = None
    try:
        lines = read_metrics(folder)
    except (OSError, ValueError):
        lines = []
    if not lines:
        return "a run that saved no epoch yet (stopped before its first checkpoint)"
    best = max((line.get("best_test_mAP") or 0.0) for line in lines)
    finished = epochs_planned is not None and len(lines) >= epochs_planned
    state = "a finished run" if finished else "an unfinished run"
    return f"{state} ({len(lines)} of {epochs_planned or '?'} epochs, best evaluation mAP {best:.2f})"


def held_run_files(folder: str) -> list[str]:
    return [name for name in RUN_FILES if os.path.exists(os.path.join(folder, name))]


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def refuse_overwriting_the_resumed_run(folder: str, resume: str | None, overwrite: bool) -> bool:
    """Whether ``resume`` continues the run in ``folder``; with --overwrite that would delete it: refused."""
    resuming_here = resume is not None and _same_folder(os.path.dirname(os.path.abspath(resume)), folder)
    if resuming_here and overwrite:
        raise ConfigError(f"--resume {resume} and --overwrite: --overwrite would delete the run of "
                          f"--path_dest {folder!r} that --resume continues; drop --overwrite to continue it, "
                          "or --resume to replace it")
    return resuming_here


def check_run_folder(folder: str, resume: str | None, overwrite: bool) -> None:
    resuming_here = refuse_overwriting_the_resumed_run(folder, resume, overwrite)
    if os.path.isdir(folder) and held_run_files(folder) and not overwrite and not resuming_here:
        last = os.path.join(folder, "last.pth")
        resume_hint = f"--resume {last} to continue it, " if os.path.isfile(last) else ""
        raise ConfigError(
            f"--path_dest {folder!r} holds {describe_run(folder)} ({', '.join(held_run_files(folder))}); "
            f"a new run would overwrite it. Pass {resume_hint}--overwrite to replace it, or another "
            "--path_dest")
    check_writable_folder(folder, "--path_dest")


def check_writable_folder(folder: str, flag: str) -> None:
    """The folder is writable or can be created; nothing is created (a run refused later leaves no trace)."""
    path = existing_ancestor(folder)
    if not os.path.isdir(path):
        raise ConfigError(f"{flag}: {path!r} is a file, so the folder {folder!r} cannot be created; pass "
                          "another folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: {path!r} is not writable (read-only or no permission), so {folder!r} "
                          "cannot be written; pass a writable folder")


def clear_run_files(folder: str) -> list[str]:
    removed = []
    for name in RUN_FILES:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
            removed.append(name)
    for name in RUN_FOLDERS:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(name + "/")
    return removed


def resolve_run_folder(path_dest: str | None, run_name: str, *, resume: str | None, overwrite: bool,
                       is_main: bool = True) -> str:
    """The run's folder: ``path_dest``, or a fresh one chosen on rank 0; checked, and cleared on
    --overwrite. Called by every rank (it synchronises them)."""
    folder = path_dest
    if folder is None:
        folder = broadcast_object(fresh_run_folder(DEFAULT_PARENT, run_name) if is_main else None)
    if is_main:  # one writer (train.py lets go in its `finally`); the checks below run under the lock
        check_writable_folder(folder, "--path_dest")
        lock_folder(folder, "--path_dest")
    try:
        check_run_folder(folder, resume, overwrite)
    except ConfigError:
        unlock_folder(folder)
        raise
    barrier()  # every rank has looked before rank 0 clears
    if overwrite and is_main and os.path.isdir(folder):
        removed = clear_run_files(folder)
        if removed:
            print(f"--overwrite: removed {', '.join(removed)} of the previous run in {folder}", flush=True)
    barrier()
    return folder
