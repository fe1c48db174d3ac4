"""Crash-safe file writes: every output is written to ``<path>.tmp.<pid>``, fsynced and renamed over
``path`` (a process killed mid-write leaves the previous file intact; the folder is fsynced so the new
name survives a power loss). Temporaries of killed processes are removed at the next write of the file."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os

import numpy as np
import torch


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
