"""Issue 18, the writers: one writer per folder (an OS lock), no file replaced without --overwrite,
reproduce.py's children stopped with it and its interrupted cells resumed, and hints that are true."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import reproduce
import train
from coco_simulation.__main__ import main as simulate_main
from src.data.prepare import main as prepare_main
from src.prior_command import cli as prior_cli
from src.reproduce import runner
from src.reproduce.identity import run_settings, settings_identity
from src.reproduce.protocols import ROWS
from src.utils import run_folder
from src.utils.cli import ConfigError, run_cli
from src.utils.io import LOCK_FILE, lock_folder, unlock_folder
from src.utils.run_folder import check_run_folder
from tests.conftest import SINGLE_THREAD_ENV, tiny_train_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, **SINGLE_THREAD_ENV, PYTHONUNBUFFERED="1")
class _Holder:
    """A second process (forked: no start-up cost) that takes the lock of ``folder`` and sleeps."""

    def __init__(self, folder):
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child never returns into the tests
            try:
                lock_folder(folder, "--x")
                os.write(write, b"locked")
                time.sleep(900)
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 6) == b"locked"
        os.close(read)

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_for(condition, seconds: float):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _train_children(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, command line) of ``pid``'s children running train.py (a child not yet exec'd is skipped)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            for child in handle.read().split():
                try:
                    with open(f"/proc/{child}/cmdline") as cmdline:
                        command = cmdline.read().split("\0")
                except FileNotFoundError:  # ended meanwhile
                    continue
                if any(part.endswith("train.py") for part in command):
                    found.append((int(child), command))
    return found


# ----------------------------------------------------------------------------------- one writer per folder
def test_a_folder_held_by_another_process_is_refused_by_train_reproduce_and_prepare(embedded_data_dir,
                                                                                    tmp_path, capsys):
    folder = tmp_path / "busy"
    holder = _Holder(folder)
    try:
        with open(folder / LOCK_FILE) as handle:
            assert handle.read().split("\n")[0] == str(holder.pid)
        assert run_cli(train.main, tiny_train_argv(embedded_data_dir, folder), prog="train.py") == 2
        err = capsys.readouterr().err
        assert f"--path_dest {str(folder)!r} is being written by another process (pid {holder.pid}: " in err
        assert f"{sys.executable} {sys.argv[0]}" in err and "pass another --path_dest" in err
        assert reproduce.cli(["--out", str(folder), "--data_root", str(tmp_path / "data"), "--models_dir",
                              str(tmp_path / "models")]) == 2
        assert f"--out {str(folder)!r} is being written by another process (pid {holder.pid}" in \
            capsys.readouterr().err
        assert run_cli(prepare_main, ["coco2014", "--root", str(folder), "--no_space_check"]) == 2
        assert f"--root {str(folder)!r} is being written by another process (pid {holder.pid}" in \
            capsys.readouterr().err
        assert sorted(os.listdir(folder)) == [LOCK_FILE]  # nothing written by the refused commands
    finally:
        holder.kill()
    lock_folder(folder, "--path_dest")  # the kernel let go of the killed holder's lock
    with open(folder / LOCK_FILE) as handle:
        assert handle.read().split("\n")[0] == str(os.getpid())
    unlock_folder(folder)
    assert os.listdir(folder) == []  # the lock file goes with the lock
    lock_folder(tmp_path / "new", "--out")
    unlock_folder(tmp_path / "new")
    assert not (tmp_path / "new").exists()  # the lock created it and nothing was written there: removed


@pytest.mark.slow
def test_a_second_train_py_process_exits_2_at_once(embedded_data_dir, tmp_path):
    folder = tmp_path / "run"
    holder = _Holder(folder)
    try:
        # The time bound is loose (imports on a loaded machine); what counts: refused before any work.
        second = subprocess.run([sys.executable, "train.py", *tiny_train_argv(embedded_data_dir, folder)],
                                cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and os.listdir(folder) == [LOCK_FILE] and holder.alive()
        assert f"(pid {holder.pid}: " in second.stderr and str(folder) in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        holder.kill()


def test_resume_with_overwrite_of_the_same_folder_is_refused_before_anything_is_touched(
        embedded_data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("args.json", "metrics.jsonl", "last.pth", "best.pth"):
        (run / name).write_text(name)
    before = {name: (run / name).read_text() for name in os.listdir(run)}
    argv = tiny_train_argv(embedded_data_dir, run, "--resume", str(run / "last.pth"), "--overwrite")
    assert run_cli(train.main, argv, prog="train.py") == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "drop --overwrite to continue it" in err
    assert {name: (run / name).read_text() for name in os.listdir(run)} == before


# ----------------------------------------------------------------------------------- named output files
def test_coco_simulation_keeps_an_existing_out_file_without_overwrite(embedded_data_dir, tmp_path, capsys):
    out = tmp_path / "labels.npz"
    out.write_bytes(b"an earlier run's labels")
    argv = ["--data", embedded_data_dir, "--simulate_partial_param", "10", "--out", str(out),
            "--plot", "none"]
    assert run_cli(simulate_main, argv) == 2
    err = capsys.readouterr().err
    assert f"--out: {str(out)!r} exists" in err and "pass --overwrite to replace it" in err
    assert out.read_bytes() == b"an earlier run's labels"
    assert run_cli(simulate_main, [*argv, "--overwrite"]) == 0
    assert out.read_bytes()[:2] == b"PK"  # an .npz now


def test_prior_command_keeps_an_existing_out_file_without_overwrite(stage1_run, embedded_data_dir, tmp_path,
                                                                    capsys):
    out = tmp_path / "prior.csv"
    out.write_text("Classes,avg_pred\nkept,0.5\n")
    argv = ["--data", embedded_data_dir, "--model_path", stage1_run["best"], "--device", "cpu",
            "--workers", "0", "--out", str(out)]
    assert prior_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"--out: {str(out)!r} exists" in err and "pass --overwrite to replace it" in err
    assert out.read_text() == "Classes,avg_pred\nkept,0.5\n"
    assert prior_cli([*argv, "--overwrite"]) == 0
    assert out.read_text().startswith("Classes,avg_pred\n") and "kept" not in out.read_text()


# ----------------------------------------------------------------------------------- reproduce.py
def _embedded(tmp_path, *flags):
    args = reproduce.parse_args(["--data_root", str(tmp_path / "data"), "--models_dir",
                                 str(tmp_path / "models"), "--out", str(tmp_path / "out"), *flags])
    return args, reproduce.build_protocol(args)


def test_an_interrupted_cell_resumes_from_its_last_pth_only_with_the_same_settings(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(runner, "run_logged", lambda command, log, env: started.append(command))
    monkeypatch.setattr(runner, "summarise_run", lambda path: {"best_mAP": 1.0, "final_mAP": 1.0})
    args, protocol = _embedded(tmp_path)
    group, row = runner.Group(0, "fpc", 73), next(r for r in ROWS if r.key == "negative_asl")
    cell = tmp_path / "out" / "cells" / "fpc_seed0_negative_asl"
    cell.mkdir(parents=True)
    (cell / "last.pth").write_bytes(b"epoch 1 of 2")
    settings = run_settings(runner.cell_flags(args, protocol, group, row, "l.npz", None, str(cell)), 1,
                            protocol.data_config)
    (cell / "settings.json").write_text(json.dumps({"identity": settings_identity(settings)}))
    runner.run_cell(args, protocol, group, row, "l.npz", None, {})
    command = started[-1]
    assert command[command.index("--resume") + 1] == str(cell / "last.pth") and "--overwrite" not in command

    (cell / "result.json").unlink()  # interrupted again, now under other settings: replaced, not resumed
    changed, changed_protocol = _embedded(tmp_path, "--epochs", "5")
    runner.run_cell(changed, changed_protocol, group, row, "l.npz", None, {})
    assert "--overwrite" in started[-1] and "--resume" not in started[-1]


def _watch(process, predicate, seconds):
    assert _wait_for(lambda: predicate() or process.poll() is not None, seconds)
    assert process.poll() is None, process.communicate()


@pytest.mark.slow
def test_reproduce_stops_its_train_py_on_sigterm_and_sigkill_and_a_rerun_resumes(tmp_path):
    argv = [sys.executable, "reproduce.py", "--data_root", str(tmp_path / "data"), "--models_dir",
            str(tmp_path / "models"), "--out", str(tmp_path / "out"), "--n_train", "64", "--n_test", "32",
            "--upstream_epochs", "30", "--seeds", "1", "--schemes", "fpc", "--rows", "ignore_ce",
            "--epochs", "1", "--batch-size", "32", "--jobs", "1", "--device", "cpu"]
    upstream = tmp_path / "out" / "upstream"

    def last_pth():
        return list(upstream.glob("*/last.pth"))

    first = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    second = None
    try:
        _watch(first, lambda: bool(last_pth()), 300)  # the backbone's pretraining saved an epoch
        ((child, _),) = _train_children(first.pid)
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
        assert first.returncode == 143 and "SIGTERM: stopped" in out and "Re-run the same command" in out
        assert _gone(child)

        second = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT)
        _watch(second, lambda: bool(_train_children(second.pid)), 300)
        ((child, command),) = _train_children(second.pid)
        assert command[command.index("--resume") + 1] == str(last_pth()[0]) and "--overwrite" not in command
        second.kill()  # SIGKILL: nothing passes a signal on; the child must notice on its own
        second.wait()
        assert _wait_for(lambda: _gone(child), 60)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()


def test_a_read_only_models_dir_fails_before_any_pretraining(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    models.mkdir()
    real_access = os.access
    monkeypatch.setattr(run_folder.os, "access",  # root ignores permission bits
                        lambda path, mode: False if str(path) == str(models) else real_access(path, mode))
    monkeypatch.setattr(runner, "prepare_embedded", lambda *a: pytest.fail("pretraining started"))
    argv = ["--data_root", str(tmp_path / "data"), "--models_dir", str(models),
            "--out", str(tmp_path / "out")]
    assert reproduce.cli(argv) == 2
    err = capsys.readouterr().err
    assert f"--models_dir: {str(models)!r} is not writable" in err and "pass a writable folder" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("files, hint", [
    (("args.json", "metrics.jsonl"), False),  # stopped before its first checkpoint
    (("args.json", "metrics.jsonl", "best.pth"), False),  # reproduce's upstream folder: last.pth moved away
    (("args.json", "metrics.jsonl", "best.pth", "last.pth"), True),
])
def test_a_held_run_folder_hints_resume_only_when_last_pth_exists(tmp_path, files, hint):
    for name in files:
        (tmp_path / name).write_text("")
    with pytest.raises(ConfigError) as error:
        check_run_folder(str(tmp_path), None, overwrite=False)
    assert ("--resume" in str(error.value)) == hint
    assert "--overwrite to replace it" in str(error.value)
