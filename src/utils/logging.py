"""Run outputs of train.py (rank 0 only): args.json, metrics.jsonl (one object per epoch, ``"epoch"`` from
1, also the TensorBoard step) and TensorBoard scalars. On resume metrics.jsonl is rewritten from the
checkpoint's history, so epochs lost with a killed process do not appear twice."""

from __future__ import annotations

import json
import math
import os
import subprocess

from src.utils.io import atomic_write_json, atomic_write_text

METRICS_FILE = "metrics.jsonl"  # one JSON object per epoch: written by RunLogger, read by read_metrics


def git_commit(repo_dir: str | None = None) -> str | None:
    """The checked-out commit (suffixed ``-dirty`` with uncommitted changes), or None."""
    repo_dir = repo_dir or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_dir,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit or None


def _json_safe(value):
    """NaN/inf are not JSON; write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class RunLogger:
    """Inert when not ``enabled`` (not rank 0)."""

    def __init__(self, folder: str, enabled: bool = True):
        self.folder, self.enabled = folder, enabled
        self.metrics_path = os.path.join(folder, METRICS_FILE)
        self._writer = None
        if enabled:
            os.makedirs(folder, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter  # slow to import: only where it writes

            self._writer = SummaryWriter(log_dir=os.path.join(folder, "tensorboard"))

    def write_args(self, config: dict) -> None:
        if self.enabled:
            atomic_write_json(os.path.join(self.folder, "args.json"), _json_safe(config))

    def reset_history(self, history: list[dict]) -> None:
        if self.enabled:
            atomic_write_text(self.metrics_path, "".join(json.dumps(_json_safe(h)) + "\n" for h in history))

    def log_epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_json_safe(record)) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch":
                    self._writer.add_scalar(f"epoch/{key}", value, record["epoch"])
            self._writer.flush()

    def log_step(self, name: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(folder: str) -> list[dict]:
    """The epochs a run's metrics.jsonl holds, in order (OSError / ValueError for a missing or bad file)."""
    with open(os.path.join(folder, METRICS_FILE), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main_print(is_main: bool, *args, **kwargs) -> None:
    if is_main:
        print(*args, **kwargs, flush=True)
