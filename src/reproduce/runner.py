"""Running the table: every cell is a ``train.py`` process (command in ``<out>/cells/<cell>/command.txt``),
reused only when its recorded settings are this run's (`src.reproduce.identity`). Per (seed, column) the
paper's workflow: simulate the partial labels, Ignore (stage 1, writes the prior), Negative, then CSL.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from src.callbacks import IGNORED_FILE
from src.data.embedded import class_attributes, ensure_dataset
from src.prior import read_prior_csv
from src.reproduce.identity import reusable, run_settings, settings_identity
from src.reproduce.mechanism import ignored_composition, read_ignored_file
from src.reproduce.protocols import (
    COCO_EXPECTED_POSITIVES,
    GIVEN_SCHEME,
    Protocol,
    Row,
    flags_to_argv,
    labels_complete,
    protocol_rows,
    resolve_threshold,
    scaled_schedule,
    training_labels,
)
from src.utils.cli import ExitRequest
from src.utils.io import atomic_write_json, atomic_write_text
from src.utils.logging import format_duration, read_metrics
from src.utils.run_folder import check_writable_folder

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SCRIPT = os.path.join(REPO_ROOT, "train.py")
LOG_TAIL_LINES = 25


class CellFailed(ExitRequest):
    """A step of the table failed (exit 1, with the log's tail); the finished cells are reused next time."""

    exit_code = 1

    def __init__(self, reason: str):
        super().__init__(f"reproduce.py: error: {reason}\nRe-run the same command to resume after fixing it.")


class Interrupted(ExitRequest):
    def __init__(self, signum: int):
        self.exit_code = 128 + signum
        super().__init__(f"reproduce.py: {signal.Signals(signum).name}: stopped, and its running steps "
                         "with it. Re-run the same command to resume: finished cells are reused, "
                         "interrupted ones continue from their last.pth")


class Children:
    """The running steps of the table, each in its own session (process group): reproduce.py passes a
    SIGTERM or SIGINT on to them (as SIGTERM, on which train.py saves last.pth) and they get SIGTERM when
    it dies, even by SIGKILL (PR_SET_PDEATHSIG, Linux)."""

    def __init__(self):
        self.live, self.launching, self.stopped = set(), 0, None
        self.lock = threading.Lock()

    def on_signal(self, signum, frame) -> None:
        self.stopped = signum
        if not self.live and not self.launching:  # no step running: stop here
            raise Interrupted(signum)
        for child in list(self.live):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    @contextlib.contextmanager
    def forwarding_signals(self):
        signals, self.stopped = (signal.SIGTERM, signal.SIGINT), None
        previous = {signum: signal.signal(signum, self.on_signal) for signum in signals}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def run(self, command: list[str], log, env: dict) -> int:
        with self.lock:
            if self.stopped:
                raise Interrupted(self.stopped)
            self.launching += 1
        try:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                     start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
            self.live.add(child)
        finally:
            with self.lock:
                self.launching -= 1
        try:
            if self.stopped:  # a signal came while it started
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)
            returncode = child.wait()
        finally:
            self.live.discard(child)
        if self.stopped:
            raise Interrupted(self.stopped)
        return returncode


def _die_with_parent(parent: int):
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

    def in_child() -> None:  # after fork, before exec
        if libc is not None:
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that
            os.kill(os.getpid(), signal.SIGTERM)
    return in_child


CHILDREN = Children()


def run_logged(command: list[str], log_path: str, env: dict) -> None:
    print("$ " + shlex.join(command), flush=True)
    with open(log_path, "w") as log:
        returncode = CHILDREN.run(command, log, env)
    if returncode != 0:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-LOG_TAIL_LINES:])
        raise CellFailed(f"command failed (exit {returncode}); log: {log_path}\n{tail}")


def train_command(args, flags: dict) -> list[str]:
    launcher = [sys.executable]
    if args.nproc_per_node > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc_per_node}"]
    return launcher + [TRAIN_SCRIPT] + flags_to_argv(flags)


def summarise_run(path_dest: str) -> dict:
    """Best-over-epochs mAP (the paper's protocol, max of regular and EMA) and the final epoch's."""
    epochs = read_metrics(path_dest)
    if not epochs:
        raise CellFailed(f"{path_dest}/metrics.jsonl holds no epoch")
    maps = [max(entry["test_regular_mAP"], entry["test_ema_mAP"]) for entry in epochs]
    best = maps.index(max(maps))  # the first best epoch
    return {"best_mAP": maps[best], "best_epoch": epochs[best]["epoch"], "final_mAP": maps[-1],
            "final_mAP_regular": epochs[-1]["test_regular_mAP"], "epochs": len(epochs)}


def find_prior(path_dest: str) -> str:
    """The one CSV in the cell's priors/ (its name is train.py's to choose)."""
    folder = os.path.join(path_dest, "priors")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".csv")) if os.path.isdir(folder) else []
    if len(files) != 1:
        raise CellFailed(f"the run in {path_dest} wrote {len(files)} priors under {folder}, expected one")
    return os.path.join(folder, files[0])


def ignored_classes(prior_path: str, threshold: float) -> list[int]:
    """The classes selective mode ignores: prior > threshold, compared as the loss does (float32)."""
    prior = read_prior_csv(prior_path).numpy().astype(np.float32)
    return np.flatnonzero(prior > np.float32(threshold)).tolist() if threshold else []


def expected_positives(protocol: Protocol) -> float:
    """EPR's E: the mean number of positives per training image of the full labels (the embedded
    generator's, a complete CSV's), or Cole et al.'s 2.9 for COCO (whose full labels the protocol does not
    read). Partial labels cannot identify it (docs/peer_methods.md): refused for an incomplete CSV."""
    if protocol.name == "coco":
        return COCO_EXPECTED_POSITIVES
    if not labels_complete(protocol):
        raise ValueError("the EPR row needs the expected number of positives per image, which the partial "
                         "labels of train.csv cannot give; leave epr out of --rows and run train.py "
                         "--partial_loss_mode epr --epr_expected_positives E with your own estimate of E")
    labels = training_labels(protocol)[0]
    return float((labels == 1).sum(axis=1).mean())


def cell_composition(cell_dir: str, protocol: Protocol, prior_ignored=()) -> dict:
    """What the cell's top-k ignored, classified against the true labels (`ignored_composition`)."""
    image_ids, classes, recorded_names = read_ignored_file(os.path.join(cell_dir, IGNORED_FILE))
    truth = protocol.truth_data or protocol.data
    labels, full_ids, full_names = training_labels(protocol, truth)
    if recorded_names != full_names:
        raise CellFailed(f"{cell_dir}: the recorded classes differ from those of {truth}")
    return ignored_composition(image_ids, classes, labels, full_ids,
                               class_attributes(protocol.design, with_core=True), prior_ignored)


class Progress:
    """Cells done / total, elapsed, time left (at the pace of the cells trained; reused count as done)."""

    def __init__(self, total: int):
        self.total, self.done, self.trained = total, 0, 0
        self.started = time.time()
        self._lock = threading.Lock()

    def cell_finished(self, trained: bool) -> str:
        with self._lock:
            self.done += 1
            self.trained += int(trained)
            elapsed = time.time() - self.started
            left = self.total - self.done
            pace = elapsed / self.trained if self.trained else 0.0
            eta = f", about {format_duration(left * pace)} left" if left and self.trained else ""
            line = f"[progress] {self.done}/{self.total} cells, {format_duration(elapsed)} elapsed{eta}"
        print(line, flush=True)
        return line


@dataclass
class Group:
    """One (seed, column): its partial labels and its cells, run in order (CSL needs Ignore's prior)."""
    seed: int
    scheme: str
    param: float

    @property
    def name(self) -> str:
        return f"{self.scheme}_seed{self.seed}"


def simulate_labels(args, protocol: Protocol, group: Group, env: dict) -> str | None:
    """The group's partial-label file (None for the CSV's own labels, column 'given')."""
    if group.scheme == GIVEN_SCHEME:
        return None
    out = os.path.join(args.out, "labels", f"{group.name}.npz")
    flags = {"data": protocol.data, "metadata": protocol.train_flags.get("metadata"),
             "simulate_partial_type": group.scheme, "simulate_partial_param": group.param, "seed": group.seed}
    if protocol.name == "csv":
        flags["dataset_type"] = "csv"
    settings = run_settings(flags, 1, protocol.data_config)
    if not reusable(out, out[:-len(".npz")] + ".settings.json", settings, args.overwrite, out):
        command = [sys.executable, "-m", "coco_simulation", *flags_to_argv(flags), "--out", out]
        run_logged(command, out + ".log", env)
    return out


def cell_flags(args, protocol: Protocol, group: Group, row: Row, labels: str | None, prior: str | None,
               cell_dir: str) -> dict:
    flags = dict(protocol.train_flags, data=protocol.data, partial_labels=labels, seed=group.seed,
                 path_dest=cell_dir, **row.flags, **row.column_flags.get(group.scheme, {}))
    if protocol.upstream is not None:
        flags["model-path"] = protocol.upstream["path"]
    flags["estimate_prior"] = "clean" if row.writes_prior else "none"
    if row.scaled:  # docs/peer_methods.md "Schedules at the protocol's length"
        flags.update(scaled_schedule(flags["partial_loss_mode"], int(flags["epochs"])))
    if protocol.name == "embedded" and flags.get("partial_loss_mode") == "selective":
        flags["record_ignored"] = True  # the mechanism: what the top-k ignored in the last epoch
    if flags.get("partial_loss_mode") == "epr":  # E is the data's known mean (Cole et al.), not estimated
        flags["epr_expected_positives"] = f"{expected_positives(protocol):.6g}"
    if row.needs_prior:
        threshold = f"{resolve_threshold(protocol, row, prior):.6g}"  # the flag's value, exactly
        flags.update(prior_path=prior, prior_threshold=threshold)
    return flags


def run_cell(args, protocol: Protocol, group: Group, row: Row, labels: str | None, prior: str | None, env,
             twin: dict | None = None, progress: Progress | None = None) -> dict:
    cell_dir = os.path.join(args.out, "cells", f"{group.name}_{row.key}")
    flags = cell_flags(args, protocol, group, row, labels, prior, cell_dir)
    settings = run_settings(flags, args.nproc_per_node, protocol.data_config)
    result_path, record = os.path.join(cell_dir, "result.json"), os.path.join(cell_dir, "settings.json")
    resumable = interrupted_run(cell_dir, record, settings)
    stored = None
    if reusable(result_path, record, settings, args.overwrite, cell_dir):
        with open(result_path) as handle:
            stored = json.load(handle)
        result = dict(stored)
    else:
        result = _train_cell(args, protocol, group, row, flags, env, twin, resumable)
        result["identity"] = settings_identity(settings)
    if flags.get("record_ignored"):  # derived from the recorded file at every report: never stale
        result["ignored"] = (twin or result).get("ignored") if "same_run_as" in result else \
            cell_composition(cell_dir, protocol, result.get("ignored_classes") or ())  # a twin has no file
    if result != stored:
        atomic_write_json(result_path, result)
    if progress is not None:
        progress.cell_finished(trained="same_run_as" not in result)
    return result


def interrupted_run(cell_dir: str, record: str, settings: dict) -> str | None:
    """The last.pth of an interrupted attempt with these settings (no result.json yet), to resume."""
    last = os.path.join(cell_dir, "last.pth")
    if os.path.exists(os.path.join(cell_dir, "result.json")) or not os.path.isfile(last):
        return None
    with contextlib.suppress(OSError, ValueError), open(record) as handle:
        if json.load(handle).get("identity") == settings_identity(settings):
            return last
    return None


def _train_cell(args, protocol, group, row, flags, env, twin, resume: str | None = None) -> dict:
    """Run one cell's train.py (continuing an interrupted attempt of the same settings from its last.pth;
    one of other settings is replaced), or reuse its twin's run (`Row.same_run_as`)."""
    command = train_command(args, dict(flags, **({"resume": resume} if resume else {"overwrite": True})))
    cell_dir, prior = flags["path_dest"], flags.get("prior_path")
    atomic_write_text(os.path.join(cell_dir, "command.txt"), shlex.join(command) + "\n")
    threshold = float(flags["prior_threshold"]) if row.needs_prior else None
    ignored = ignored_classes(prior, threshold) if row.needs_prior else None
    if twin is not None and ignored == ignored_classes(prior, twin["prior_threshold"]):
        result = dict(twin, row=row.key, prior_threshold=threshold, seconds=0.0, command=shlex.join(command),
                      same_run_as=twin["row"], ignored_classes=ignored)
        print(f"[{group.name}] {row.label}: ignores the same classes as {twin['row']} "
              f"({result['ignored_classes']}): the same training run, result reused", flush=True)
        return result
    start = time.time()
    run_logged(command, os.path.join(cell_dir, "train.log"), env)
    result = dict(summarise_run(cell_dir), row=row.key, scheme=group.scheme, seed=group.seed,
                  param=group.param, prior_threshold=threshold, partial_labels=flags["partial_labels"],
                  seconds=round(time.time() - start, 1), command=shlex.join(command))
    if row.writes_prior:
        result["prior_path"] = find_prior(cell_dir)
    if row.needs_prior:
        result["ignored_classes"] = ignored
    print(f"[{group.name}] {row.label}: best {result['best_mAP']:.2f} final {result['final_mAP']:.2f} "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


def run_group(args, protocol: Protocol, group: Group, env: dict, progress: Progress | None = None) -> list:
    labels = simulate_labels(args, protocol, group, env)
    results, prior = [], None
    for row in protocol_rows(protocol):
        if row.full_labels:
            continue
        twin = next((r for r in results if r["row"] == row.same_run_as), None)
        result = run_cell(args, protocol, group, row, labels, prior, env, twin, progress)
        if row.key == "ignore_ce":
            prior = result["prior_path"]
        results.append(result)
    return results


def prepare_embedded(args, protocol: Protocol, env: dict) -> None:
    """Generate the embedded data; pretrain the backbone on the upstream set once (cached by its settings)."""
    upstream = protocol.upstream
    for folder, config in ((protocol.data, protocol.data_config), (upstream["data"], upstream["config"])):
        ensure_dataset(folder, **{key: value for key, value in config.items() if key != "generator_version"})
    target = upstream["path"]
    if os.path.exists(target):
        print(f"upstream backbone: reusing {target}")
        return
    path_dest = os.path.join(args.out, "upstream", os.path.splitext(os.path.basename(target))[0])
    os.makedirs(path_dest, exist_ok=True)
    # No cached backbone of these settings (path_dest is named after them): continue an interrupted attempt.
    last = os.path.join(path_dest, "last.pth")
    command = train_command(args, dict(upstream["flags"], path_dest=path_dest,
                                       **({"resume": last} if os.path.isfile(last) else {"overwrite": True})))
    run_logged(command, os.path.join(path_dest, "train.log"), env)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    atomic_write_json(os.path.splitext(target)[0] + ".json", upstream["settings"])
    os.replace(os.path.join(path_dest, "last.pth"), target)
    print(f"upstream backbone: pretrained in {path_dest}, saved to {target}")


def cell_environment(device: str, jobs: int | None) -> tuple[int, dict]:
    """Cells run at once (default: 2 on CPU, 1 on CUDA) and the environment of their processes."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    jobs = jobs or (1 if cuda else 2)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not cuda:  # share the cores between parallel cells instead of oversubscribing them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // jobs)))
    return jobs, env


def check_before_running(protocol: Protocol) -> None:
    """What would stop the table midway is checked before the hours of training: a backbone to pretrain
    must be storable, an EPR row on a CSV needs complete training labels (the embedded data may not exist
    yet: its labels are complete by construction)."""
    if protocol.upstream is not None and not os.path.exists(protocol.upstream["path"]):
        check_writable_folder(os.path.dirname(protocol.upstream["path"]), "--models_dir")
    if protocol.name == "csv" and any(row.flags.get("partial_loss_mode") == "epr"
                                      for row in protocol_rows(protocol)):
        expected_positives(protocol)


def run_table(args, protocol: Protocol, seeds: int, jobs: int, env: dict) -> list[dict]:
    if protocol.upstream is not None:
        prepare_embedded(args, protocol, env)
    full_rows = [row for row in protocol_rows(protocol) if row.full_labels]
    per_group = len(protocol_rows(protocol)) - len(full_rows)
    # --rows full_labels alone needs no partial labels at all: no (seed, column) group then.
    groups = [Group(seed, s, protocol.columns[s]) for seed in range(seeds) for s in protocol.columns
              if per_group]
    progress = Progress(seeds * len(full_rows) + len(groups) * per_group)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # The ceiling first: one run per seed, shared by every column (scheme 'full' in the results).
        jobs_full = [(Group(seed, "full", None), row) for seed in range(seeds) for row in full_rows]
        ceilings = list(pool.map(lambda job: run_cell(args, protocol, job[0], job[1], None, None, env,
                                                      progress=progress), jobs_full))
        grouped = pool.map(lambda g: run_group(args, protocol, g, env, progress), groups)
        return ceilings + [r for group_results in grouped for r in group_results]
