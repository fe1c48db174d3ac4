"""Exact resume: SIGKILL after an epoch, SIGTERM in the middle of one, then --resume.

One trajectory is interrupted twice - killed hard (SIGKILL, a subprocess) right after the epoch-1
checkpoint, resumed and pre-empted by SIGTERM after step 2 of epoch 2, resumed again to the end -
and must end bit-identical to an uninterrupted run with the same seed: weights, EMA, optimizer
state, per-epoch metrics and the running-average prior. A second test sends a real SIGTERM to a
train.py subprocess from outside (exit code 143, a consistent last.pth) and resumes it to the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import train
from src.callbacks import SigtermAtStep
from src.trainer import SIGTERM_EXIT_CODE, TrainingInterrupted
from tests.conftest import SINGLE_THREAD_ENV, single_thread, tiny_train_argv, train_py_signalled_at_first_step

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 6  # 96 images, batch 16


def _argv(data, dest, *extra):
    # negative mode uses every label; running_average makes the prior part of the resumed state.
    return tiny_train_argv(data, dest, "--epochs", "2", "--partial_loss_mode", "negative",
                           "--estimate_prior", "running_average", "--ema_decay", "0.9", *extra)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(left: dict, right: dict, what: str):
    assert left.keys() == right.keys(), what
    for key in left:
        assert torch.equal(left[key], right[key]), f"{what}: {key}"


def _metrics(dest):
    with open(os.path.join(dest, "metrics.jsonl"), encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    return [{k: v for k, v in line.items() if not k.endswith("time_s")} for line in lines]


# train.main with a callback that kills the process (SIGKILL) right after epoch N's checkpoints.
KILL_AFTER_EPOCH_SCRIPT = """
import os, signal, sys
import train
from src.callbacks import Callback

class KillAfterEpoch(Callback):
    def on_epoch_end(self, trainer, epoch):
        if epoch == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)  # die like an OOM-killed or pre-empted job

train.main(sys.argv[2:], callbacks=[KillAfterEpoch()])
"""



@pytest.fixture(scope="module")
def uninterrupted(embedded_data_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("uninterrupted")
    with single_thread():  # the same thread count as the interrupted run: same rounding
        train.main(_argv(embedded_data_dir, dest))
    return str(dest)


def test_resume_after_sigkill_and_sigterm_is_exact(embedded_data_dir, uninterrupted, tmp_path):
    dest = tmp_path / "interrupted"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_SCRIPT, "1",
                             *_argv(embedded_data_dir, dest)], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, **SINGLE_THREAD_ENV))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    after_kill = _load(dest / "last.pth")
    assert (after_kill["epoch"], after_kill["steps_done"]) == (1, STEPS_PER_EPOCH)  # epochs count from 1
    assert after_kill["history"][0]["epoch"] == after_kill["best"]["epoch"] == 1
    assert not [name for name in os.listdir(dest) if ".tmp" in name]
    # Rewritten as a checkpoint of the earlier format (no format_version, epochs counted from 0), it must
    # still resume at epoch 2 and end exactly as the uninterrupted run, metrics.jsonl counting from 1.
    old = dict(after_kill, epoch=0, best=dict(after_kill["best"], epoch=0),
               history=[dict(record, epoch=0, best_epoch=0) for record in after_kill["history"]])
    del old["format_version"]
    torch.save(old, dest / "last.pth")

    sigterm_step = STEPS_PER_EPOCH + 2  # global step 8 = step 2 of epoch 2
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        train.main(_argv(embedded_data_dir, dest, "--resume", str(dest / "last.pth")),
                   callbacks=[SigtermAtStep(sigterm_step)])
    assert signal.getsignal(signal.SIGTERM) is handler_before  # train.py's handler is removed again
    mid_epoch = _load(dest / "last.pth")
    assert (mid_epoch["epoch"], mid_epoch["steps_done"]) == (2, 2)
    assert [record["epoch"] for record in mid_epoch["history"]] == [1] and mid_epoch["format_version"] == 2

    train.main(_argv(embedded_data_dir, dest, "--resume", str(dest / "last.pth")))

    expected, resumed = _load(os.path.join(uninterrupted, "last.pth")), _load(dest / "last.pth")
    _assert_same_tensors(expected["model"], resumed["model"], "model")
    _assert_same_tensors(expected["ema"], resumed["ema"], "ema")
    for (i, a), (_, b) in zip(expected["optimizer"]["state"].items(), resumed["optimizer"]["state"].items()):
        _assert_same_tensors(a, b, f"optimizer state {i}")
    assert expected["scheduler"] == resumed["scheduler"]
    assert _metrics(uninterrupted) == _metrics(dest)  # same mAPs and losses, no duplicated epoch line
    assert torch.equal(expected["train_prior"]["sums"], resumed["train_prior"]["sums"])
    with open(os.path.join(uninterrupted, "priors", "prior_fpc_10_running_average.csv")) as a, \
            open(dest / "priors" / "prior_fpc_10_running_average.csv") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("flag, value, message", [
    ("--lr", "1e-3", "--lr: checkpoint 0.0002, now 0.001"),
    ("--alpha_neg", "0.5", "--alpha_neg: checkpoint 1.0, now 0.5"),  # a loss setting (peer ones: test_train)
    ("--loss_reduction", "mean", "--loss_reduction: checkpoint 'sum', now 'mean'"),
])
def test_resume_refuses_changed_settings(embedded_data_dir, uninterrupted, tmp_path, flag, value, message):
    argv = _argv(embedded_data_dir, tmp_path / "other", "--resume", os.path.join(uninterrupted, "last.pth"),
                 flag, value)
    with pytest.raises(train.ConfigError, match=message):
        train.main(argv)


def test_resume_alone_takes_the_runs_settings_from_its_checkpoint(embedded_data_dir, uninterrupted, tmp_path,
                                                                   capsys):
    """`train.py --resume RUN/last.pth` and nothing else: the checkpoint owns the run's settings (data, loss,
    schedule, seed, -j) and its folder; the result is the uninterrupted run's, to the bit."""
    dest = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train.main(_argv(embedded_data_dir, dest), callbacks=[SigtermAtStep(STEPS_PER_EPOCH + 2)])
    capsys.readouterr()
    train.main(["--resume", str(dest / "last.pth")])
    assert f"from {dest / 'last.pth'} (the run's own); given: none" in capsys.readouterr().out
    expected, resumed = _load(os.path.join(uninterrupted, "last.pth")), _load(dest / "last.pth")
    _assert_same_tensors(expected["model"], resumed["model"], "model")
    assert _metrics(uninterrupted) == _metrics(dest)
    with open(dest / "args.json") as handle:
        assert json.load(handle)["resume"] == str(dest / "last.pth")


def test_resume_prints_where_its_settings_come_from(embedded_data_dir, uninterrupted, tmp_path, capsys):
    train.main(["--resume", os.path.join(uninterrupted, "last.pth"), "--path_dest", str(tmp_path / "b"),
                "--print-freq", "1000"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("settings:"))
    assert line.endswith("(the run's own); given: --path_dest, --print_freq")


def test_resume_of_a_finished_run_trains_nothing_more(embedded_data_dir, uninterrupted, tmp_path):
    """A complete run's last.pth resumes past the last epoch: weights and history stay as they are."""
    dest = tmp_path / "again"
    summary = train.main(_argv(embedded_data_dir, dest, "--resume", os.path.join(uninterrupted, "last.pth")))
    assert len(summary["history"]) == 2
    assert _metrics(dest) == _metrics(uninterrupted)


SIGTERM_EPOCHS = 6  # 36 steps of ~0.04 s: still training long after the first step is printed


def test_real_sigterm_saves_last_and_exits_143_then_resume_finishes(embedded_data_dir, tmp_path):
    """A real pre-emption: train.py as a subprocess gets SIGTERM from outside while it trains."""
    dest = tmp_path / "preempted"
    argv = _argv(embedded_data_dir, dest, "--epochs", str(SIGTERM_EPOCHS))
    returncode, printed = train_py_signalled_at_first_step(
        argv, lambda process: process.send_signal(signal.SIGTERM), 120)
    assert returncode == SIGTERM_EXIT_CODE == 128 + signal.SIGTERM, printed[-3000:]

    state = _load(dest / "last.pth")
    epoch, steps = state["epoch"], state["steps_done"]  # epoch counted from 1
    global_step = (epoch - 1) * STEPS_PER_EPOCH + steps
    assert 1 <= steps <= STEPS_PER_EPOCH and 1 <= global_step < SIGTERM_EPOCHS * STEPS_PER_EPOCH
    assert state["scheduler"]["last_epoch"] == global_step  # OneCycleLR stepped once per trained batch
    finished = epoch if steps == STEPS_PER_EPOCH else epoch - 1  # stopped after evaluation, or mid-epoch
    before = _metrics(dest) if os.path.exists(dest / "metrics.jsonl") else []  # none in epoch 1
    assert [line["epoch"] for line in before] == list(range(1, finished + 1))
    assert len(state["history"]) == finished
    if steps < STEPS_PER_EPOCH:
        assert f"at epoch {epoch}, step {steps}/{STEPS_PER_EPOCH}" in printed, printed[-3000:]
    else:
        assert f"after epoch {epoch}; continue with --resume" in printed, printed[-3000:]
    assert not [name for name in os.listdir(dest) if ".tmp" in name]

    summary = train.main(_argv(embedded_data_dir, dest, "--epochs", str(SIGTERM_EPOCHS),
                               "--resume", str(dest / "last.pth")))
    after = _metrics(dest)
    assert [line["epoch"] for line in after] == list(range(1, SIGTERM_EPOCHS + 1))
    assert after[:finished] == before  # the epochs before the pre-emption are kept, not redone
    assert len(summary["history"]) == SIGTERM_EPOCHS
    final = _load(dest / "last.pth")
    assert (final["epoch"], final["steps_done"]) == (SIGTERM_EPOCHS, STEPS_PER_EPOCH)
    assert final["scheduler"]["last_epoch"] == SIGTERM_EPOCHS * STEPS_PER_EPOCH


@pytest.mark.slow
def test_resume_with_a_per_sample_label_store_is_exact(embedded_data_dir, tmp_path):
    """em_apl keeps soft pseudo-negatives per sample, relabelled by a pass over the training set after each
    epoch from --apl_warmup_epochs on: the store is part of the checkpoint, so a run killed after epoch 1
    (after that pass) and resumed ends exactly as an uninterrupted one."""
    def argv(dest, *extra):
        return tiny_train_argv(embedded_data_dir, dest, "--epochs", "2", "--partial_loss_mode", "em_apl",
                               "--apl_warmup_epochs", "1", "--ema_decay", "0.9", *extra)

    straight = tmp_path / "straight"
    with single_thread():
        train.main(argv(straight))
    dest = tmp_path / "killed"
    env = dict(os.environ, **SINGLE_THREAD_ENV)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_SCRIPT, "1", *argv(dest)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store_after_kill = _load(dest / "last.pth")["criterion"]["soft_negatives"]
    assert torch.isfinite(store_after_kill).any()  # the pass after epoch 1 labelled entries before the kill
    with single_thread():
        train.main(argv(dest, "--resume", str(dest / "last.pth")))
    expected, resumed = _load(straight / "last.pth"), _load(dest / "last.pth")
    _assert_same_tensors(expected["model"], resumed["model"], "model")
    assert torch.equal(expected["criterion"]["soft_negatives"].nan_to_num(-7),
                       resumed["criterion"]["soft_negatives"].nan_to_num(-7))
    assert _metrics(straight) == _metrics(dest)
