"""Crash-safe file writes: every output is written to ``<path>.tmp.<pid>``, fsynced and renamed over
``path`` (a process killed mid-write leaves the previous file intact; the folder is fsynced so the new
name survives a power loss). Temporaries of killed processes are removed at the next write of the file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import shlex
import sys

import numpy as np
import torch

from src.utils.cli import ConfigError

LOCK_FILE = ".lock"
_held_locks: dict[str, tuple[int, bool]] = {}  # folder -> (descriptor, whether locking created the folder)


class OutputError(OSError):
    """An output file could not be written (the message names the path, the cause and the fix)."""


def _describe_os_error(error: OSError, path: str) -> str:
    if error.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path!r}; free disk space or write elsewhere"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{path!r} cannot be written ({error.strerror}); choose a writable folder"
    if error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"{path!r} cannot be written: a path component is a file, or the path is a folder " \
               f"({error.strerror}); choose another output path"
    return f"cannot write {path!r}: {error.strerror or error}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove ``<path>.tmp.<pid>`` files whose process is gone."""
    removed = []
    for candidate in glob.glob(glob.escape(path) + ".tmp.*"):
        suffix = candidate.rsplit(".tmp.", 1)[1]
        if suffix.isdigit() and int(suffix) != os.getpid() and not _pid_alive(int(suffix)):
            with contextlib.suppress(OSError):
                os.remove(candidate)
                removed.append(candidate)
    return removed


def _atomic_write(path: str, write, mode: str, **open_kwargs) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temporaries(path)
        with open(tmp, mode, **open_kwargs) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the folder, so that the new name survives a power loss
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as error:
        raise OutputError(error.errno, _describe_os_error(error, path)) from error
    except RuntimeError as error:  # torch.save reports a full disk as a miniz/zip RuntimeError
        raise OutputError(errno.EIO, f"cannot write {path!r} ({error}); check the free disk space "
                                     f"of {folder!r}") from error
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_torch_save(obj, path: str) -> str:
    return _atomic_write(path, lambda handle: torch.save(obj, handle), "wb")


def atomic_write_text(path: str, text: str, newline: str | None = None) -> str:
    """``newline``: passed to ``open`` (``""`` keeps line endings as given, e.g. the csv module's)."""
    return _atomic_write(path, lambda handle: handle.write(text), "w", encoding="utf-8", newline=newline)


def save_figure(figure, path: str, dpi: int = 110) -> str:
    try:
        return _atomic_write(path, lambda handle: figure.savefig(handle, dpi=dpi, format="png"), "wb")
    finally:
        figure.clear()


def existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def save_npz(path: str, **arrays) -> str:
    return _atomic_write(path, lambda handle: np.savez(handle, **arrays), "wb")


def atomic_write_json(path: str, payload) -> str:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def prepare_output_file(path: str, flag: str, example: str = "out.csv") -> str:
    """Check before any work that the output file of ``flag`` can be written, and create its folder."""
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise ValueError(f"{flag}: {path!r} is a folder, not a file; pass a file path such as "
                         f"{os.path.join(path, example)!r}")
    prepare_output_folder(os.path.dirname(os.path.abspath(path)), flag)
    return path


def refuse_existing_file(path: str, flag: str, overwrite: bool) -> None:
    """A command writing a named file keeps an earlier run's file unless ``--overwrite`` is given."""
    if os.path.isfile(path) and not overwrite:
        raise ConfigError(f"{flag}: {path!r} exists (an earlier run's output); pass --overwrite to replace "
                          f"it, or another {flag}")


def prepare_output_folder(folder: str, flag: str) -> str:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{flag}: {folder!r} is a file, not a folder; pass a folder path")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise ValueError(f"{flag}: cannot create the folder {folder!r} ({reason}); pass a path in a folder "
                         "that can be created") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: the folder {folder!r} is not writable; pass a writable folder")
    return folder


def lock_folder(folder: str, flag: str) -> None:
    """Make this process the folder's one writer until `unlock_folder` or its exit: an exclusive ``flock``
    on ``folder/.lock`` (the kernel releases it when the process dies, however), which records the
    holder's pid and command. The folder is created when missing. Another holder: ConfigError naming it."""
    folder = os.path.abspath(folder)
    if folder in _held_locks:
        return
    created = not os.path.isdir(folder)
    path = os.path.join(folder, LOCK_FILE)
    while True:
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ConfigError(f"{flag}: {_describe_os_error(error, folder)}") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(fd, encoding="utf-8", errors="replace") as handle:  # closes fd
                pid, _, command = handle.read().partition("\n")
            raise ConfigError(f"{flag} {folder!r} is being written by another process (pid {pid or '?'}: "
                              f"{command.strip() or 'command unknown'}); wait for it to end, or pass "
                              f"another {flag}") from None
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the previous holder removed the file as it let go: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n{shlex.join([sys.executable, *sys.argv])}\n".encode())
    _held_locks[folder] = fd, created


def unlock_folder(folder: str | None) -> None:
    """Let go of `lock_folder`'s lock (nothing when not held): the lock file is removed, and the folder
    too when locking created it and nothing else was written there."""
    fd, created = _held_locks.pop(os.path.abspath(folder), (None, False)) if folder else (None, False)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.remove(os.path.join(folder, LOCK_FILE))  # while still held: no one locks the old file after
        if created:
            os.rmdir(folder)  # fails, as wanted, when the run wrote anything
    os.close(fd)
