"""Interruptions and faults during a run (issue 18, "an interruption never costs finished work"): one test
per case, on the tiny embedded dataset of tests/conftest.py.

| fault | what happens now | test |
| --- | --- | --- |
| evaluation fails mid-run | last.pth holds the trained epoch; exact resume | test_last_pth_is_written_* |
| training PNG cut after its header | exit 2, file named, last.pth at that step | test_truncated_training_* |
| the same, --skip_bad_images | replaced by the next image, counted at epoch end | test_truncated_training_* |
| evaluation PNG cut after its header | named at start-up, before any step | test_truncated_evaluation_* |
| --verify_images full | the training set decoded at start-up | test_verify_images_full_* |
| FIFO / device file as an image | refused by the start-up scan, never opened | test_fifo_* |
| Ctrl-C (SIGINT to the process group) | last.pth saved, one line, exit 130 | test_ctrl_c_* |
| SIGTERM during the prior pass | one line: prior not written, how to get it | test_sigterm_during_the_* |
| a torchrun rank stops answering | others end after --dist_timeout, one line each | test_stopped_rank_* |
| crafted last.pth (head, epoch, groups) | one line naming the file and the fault | test_crafted_* |
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import train
import validate
from src import prior_command
from src.callbacks import Callback
from src.data import build_split
from src.data.image_io import image_problem
from src.data.labels import DatasetError
from src.prior import read_prior_csv
from src.utils.cli import run_cli
from tests.conftest import SINGLE_THREAD_ENV, single_thread, tiny_train_argv, train_py_signalled_at_first_step

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 6  # 96 images, batch 16


def _data_copy(source, tmp_path):
    target = tmp_path / "embedded"
    shutil.copytree(source, target)
    return target


def _image(root, split: str, image_id: int):
    return root / f"{split}2014" / f"embedded_{split}2014_{image_id:06d}.png"


def _truncate(path) -> None:
    """Keep the header and half of the pixel data: the start-up header check still passes."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _run(argv, callbacks=()):
    """train.py as a command, in this process: (exit status, stdout, stderr)."""
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = run_cli(lambda a: train.main(a, callbacks=callbacks), argv, prog="train.py")
    return code, out.getvalue(), err.getvalue()


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _metrics(dest):
    with open(os.path.join(dest, "metrics.jsonl"), encoding="utf-8") as handle:
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("time_s")} for line in handle]


def _stage1_argv(data, dest, *extra):
    return tiny_train_argv(data, dest, "--epochs", "2", "--partial_loss_mode", "ignore", *extra)


class DamageAtEpochStart(Callback):
    """Truncates ``path`` when epoch ``epoch`` starts (after the start-up checks): its evaluation fails."""

    def __init__(self, epoch, path):
        self.epoch, self.path = epoch, path

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            _truncate(self.path)


# ------------------------------------------------------------------------- (1) last.pth before evaluation
@pytest.mark.slow
def test_last_pth_is_written_before_evaluation_and_a_failed_evaluation_resumes_exactly(
        embedded_data_dir, stage1_run, tmp_path):
    root, dest = _data_copy(embedded_data_dir, tmp_path), tmp_path / "run"
    image = _image(root, "val", 3)
    intact = image.read_bytes()
    code, _, err = _run(_stage1_argv(root, dest), [DamageAtEpochStart(2, image)])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(image) in err and f"{dest / 'last.pth'} holds every trained epoch" in err
    saved = _load(dest / "last.pth")  # epoch 2 trained, its evaluation pending
    assert (saved["epoch"], saved["steps_done"], saved["evaluation_pending"]) == (2, STEPS_PER_EPOCH, True)
    assert [record["epoch"] for record in saved["history"]] == [1]

    image.write_bytes(intact)
    with contextlib.redirect_stdout(io.StringIO()):
        train.main(_stage1_argv(root, dest, "--resume", str(dest / "last.pth")))
    expected, resumed = _load(stage1_run["last"]), _load(dest / "last.pth")
    for key in ("model", "ema"):
        assert all(torch.equal(expected[key][name], resumed[key][name]) for name in expected[key]), key
    assert expected["scheduler"] == resumed["scheduler"] and "evaluation_pending" not in resumed
    assert _metrics(stage1_run["path_dest"]) == _metrics(dest)  # epoch 2 evaluated once, as uninterrupted
    with open(stage1_run["prior"]) as a, open(dest / "priors" / "prior_fpc_10.csv") as b:
        assert a.read() == b.read()


# ------------------------------------------------------------------------- (2) images bad past the header
def test_truncated_training_image_ends_the_run_resumably_or_is_skipped_and_counted(embedded_data_dir,
                                                                                    tmp_path):
    root, dest = _data_copy(embedded_data_dir, tmp_path), tmp_path / "run"
    image = _image(root, "train", 40)
    _truncate(image)
    assert image_problem(str(image)) is None and image_problem(str(image), full=True) is not None
    code, _, err = _run(tiny_train_argv(root, dest))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot decode image {image}" in err and "--skip_bad_images" in err
    saved = _load(dest / "last.pth")
    assert saved["epoch"] == 1 and 0 <= saved["steps_done"] < STEPS_PER_EPOCH
    assert f"saved {dest / 'last.pth'} at epoch 1, step {saved['steps_done']}/{STEPS_PER_EPOCH}" in err

    # The same checkpoint resumes with --skip_bad_images: the image is replaced, counted at the epoch end.
    with pytest.warns(UserWarning, match="skipped at read"):
        code, out, err = _run(tiny_train_argv(root, dest, "--resume", str(dest / "last.pth"),
                                              "--skip_bad_images"))
    assert code == 0, err
    assert "1 training images could not be decoded in epoch 1" in out
    assert _load(dest / "last.pth")["steps_done"] == STEPS_PER_EPOCH


def test_truncated_evaluation_image_is_named_at_start_up(embedded_data_dir, tmp_path):
    root, dest = _data_copy(embedded_data_dir, tmp_path), tmp_path / "run"
    _truncate(_image(root, "val", 5))
    code, out, err = _run(tiny_train_argv(root, dest))
    assert code == 2 and err.count("\n") == 1, err
    assert f"1 of 48 image files are missing or cannot be decoded: {_image(root, 'val', 5)}" in err
    assert "Epoch [" not in out and not (dest / "last.pth").exists()  # no step was trained


def test_verify_images_full_decodes_the_training_set_at_start_up(embedded_data_dir, tmp_path):
    root = _data_copy(embedded_data_dir, tmp_path)
    _truncate(_image(root, "train", 9))
    code, out, err = _run(tiny_train_argv(root, tmp_path / "run", "--verify_images", "full"))
    assert code == 2 and "Epoch [" not in out, err
    assert f"1 of 96 image files are missing or cannot be decoded: {_image(root, 'train', 9)}" in err
    dataset = build_split("coco", "train", data=str(root), skip_bad_images=True)
    with pytest.warns(UserWarning, match="skipped 1 of 96 images"):
        dataset.verify_decoding()
    assert len(dataset) == 95 and 9 not in dataset.image_ids


def test_verify_images_full_reaches_validate_and_the_prior_command(embedded_data_dir, tmp_path):
    """The flag every command's data parser takes does what it says there too (no silent no-op)."""
    root = _data_copy(embedded_data_dir, tmp_path)
    _truncate(_image(root, "val", 3))
    _truncate(_image(root, "train", 2))
    args = validate.build_parser().parse_args(["--model-path", "unused.pth", "--data", str(root),
                                               "--verify_images", "full", "--image-size", "32"])
    with pytest.raises(DatasetError, match=f"cannot be decoded: {_image(root, 'val', 3)}"):
        validate.build_val_dataset(args)
    args = prior_command.build_parser().parse_args(["--model_path", "unused.pth", "--data", str(root),
                                                    "--verify_images", "full", "--image-size", "32"])
    with pytest.raises(DatasetError, match=f"cannot be decoded: {_image(root, 'train', 2)}"):
        prior_command._load_train_sets(args, verbose=False)


# ----------------------------------------------------------------------------- (3) only regular files
def test_fifo_or_device_file_as_an_image_is_refused_without_blocking(embedded_data_dir, tmp_path):
    root = _data_copy(embedded_data_dir, tmp_path)
    fifo = _image(root, "train", 4)
    fifo.unlink()
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    assert image_problem(os.devnull) == image_problem(str(fifo)) == "not a regular file"
    outcome = {}

    def build():
        try:
            build_split("coco", "train", data=str(root))
        except DatasetError as error:
            outcome["error"] = str(error)

    worker = threading.Thread(target=build, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the start-up scan blocked on a FIFO"
    assert f"{fifo} (not a regular file)" in outcome["error"]


# ------------------------------------------------------------------------------------- (4) signals
@pytest.mark.slow
def test_ctrl_c_saves_last_and_exits_130_with_one_line(embedded_data_dir, tmp_path):
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group, loader workers included."""
    dest = tmp_path / "run"
    argv = tiny_train_argv(embedded_data_dir, dest, "--epochs", "12", "-j", "1")
    returncode, printed = train_py_signalled_at_first_step(  # its own group, as a terminal's foreground job
        argv, lambda process: os.killpg(process.pid, signal.SIGINT), 300, start_new_session=True)
    assert returncode == 130, printed[-3000:]
    last = [line for line in printed.splitlines() if line.strip()][-1]
    assert last.startswith(f"Ctrl-C (SIGINT): saved {dest / 'last.pth'} ") and "--resume" in last, printed
    assert "Traceback" not in printed and "KeyboardInterrupt" not in printed
    state = _load(dest / "last.pth")
    assert 1 <= (state["epoch"] - 1) * STEPS_PER_EPOCH + state["steps_done"] < 12 * STEPS_PER_EPOCH


# train.py whose clean prior pass receives a real SIGTERM as it starts.
SIGTERM_IN_PRIOR_PASS = """
import os, signal, sys
import src.callbacks, train
from src.utils.cli import run_cli

original = src.callbacks.compute_prior_from_model

def pass_with_sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(*args, **kwargs)

src.callbacks.compute_prior_from_model = pass_with_sigterm
sys.exit(run_cli(train.main, sys.argv[1:], prog="train.py"))
"""


@pytest.mark.slow
def test_sigterm_during_the_prior_pass_says_how_to_get_the_prior(embedded_data_dir, tmp_path):
    dest = tmp_path / "run"
    argv = tiny_train_argv(embedded_data_dir, dest, "--partial_loss_mode", "ignore")
    done = subprocess.run([sys.executable, "-c", SIGTERM_IN_PRIOR_PASS, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **SINGLE_THREAD_ENV))
    assert done.returncode == 143 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1
    assert "SIGTERM during the prior pass: no prior was written" in done.stderr
    assert f"--resume {dest / 'last.pth'}" in done.stderr
    assert f"--model_path {dest / 'best.pth'} --out {dest / 'priors' / 'prior_fpc_10.csv'}" in done.stderr
    prior = dest / "priors" / "prior_fpc_10.csv"
    assert not prior.exists()
    with contextlib.redirect_stdout(io.StringIO()), single_thread():  # what the message advises, both ways
        summary = train.main([*argv, "--resume", str(dest / "last.pth")])
        assert summary["priors"] == [str(prior)] and prior.exists() and len(summary["history"]) == 1
        again = prior_command.main(["--model_path", str(dest / "best.pth"), "--out", str(tmp_path / "p.csv"),
                                    "--data", str(embedded_data_dir), "--dataset_type", "coco", "--device",
                                    "cpu", "-j", "0", "--simulate_partial_type", "fpc",
                                    "--simulate_partial_param", "10", "--seed", "0"])
    np.testing.assert_allclose(np.asarray(again["prior"]), read_prior_csv(str(prior)).numpy(), atol=1e-6)


# ------------------------------------------------------------------------------ (5) DDP, a stopped rank
# Rank 1 stops itself (SIGSTOP, as `kill -STOP`) after its second step; rank 0 waits in the next collective.
STOP_RANK_1 = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
import train
from src import prior_command
from src.callbacks import Callback
from src.utils.cli import run_cli

class StopRank1(Callback):
    def on_step(self, trainer, global_step):
        if trainer.ctx.rank == 1 and global_step == 2:
            print(f"rank 1 pid {os.getpid()} stops", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)

sys.exit(run_cli(lambda argv: train.main(argv, callbacks=[StopRank1()]), sys.argv[1:], prog="train.py"))
"""


@pytest.mark.slow
def test_stopped_rank_ends_the_job_after_dist_timeout_with_one_line_per_survivor(embedded_data_dir, tmp_path):
    script = tmp_path / "stop_rank_1.py"
    script.write_text(STOP_RANK_1)
    argv = tiny_train_argv(embedded_data_dir, tmp_path / "run", "--epochs", "3", "--dist_timeout", "4")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--tee", "3", "--log_dir", str(tmp_path / "logs"), str(script), *argv]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, **SINGLE_THREAD_ENV), start_new_session=True)
    stopped_pid = None
    try:
        out = []
        for line in process.stdout:
            out.append(line)
            if "rank 1 pid" in line:
                stopped_pid = int(line.split("pid")[1].split()[0])
            if "rank 0: another process stopped answering" in line:
                break
        if stopped_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped_pid, signal.SIGKILL)  # torchrun would wait 30 s for a stopped process
        out.extend(process.stdout)
        process.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    seconds = time.monotonic() - started
    assert stopped_pid is not None, "".join(out)[-3000:]
    rank0_err = next((tmp_path / "logs").rglob("0/stderr.log")).read_text()
    lines = [line for line in rank0_err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rank 0: another process stopped answering"), \
        rank0_err + "".join(out)[-3000:]
    assert "--dist_timeout 4 s" in lines[0] and "--resume" in lines[0]
    assert seconds < 60


# ---------------------------------------------------------------------------- (6) crafted checkpoints
def _crafted(checkpoint: dict, fault: str) -> dict:
    crafted = dict(checkpoint)
    if fault == "head":
        model = dict(crafted["model"])
        name = next(name for name in model if name.endswith("weight") and model[name].dim() == 2)
        model[name] = torch.zeros(model[name].shape[0] + 1, model[name].shape[1])
        crafted["model"] = model
    elif fault == "epoch":
        crafted["epoch"] = -5
    else:
        optimizer = dict(crafted["optimizer"])
        optimizer["param_groups"] = optimizer["param_groups"][:1]
        crafted["optimizer"] = optimizer
    return crafted


@pytest.mark.parametrize("fault, message", [
    ("head", "its model state does not fit this run (Error(s) in loading state_dict"),
    ("epoch", "epoch -5, step 6 is not a point of a run of 2 epochs"),
    ("optimizer", "its optimizer state does not fit this run (loaded state dict has a different number of "
                  "parameter groups)"),
])
def test_crafted_checkpoint_is_one_error_naming_the_file(stage1_run, embedded_data_dir, tmp_path, fault,
                                                         message):
    path = tmp_path / "last.pth"
    torch.save(_crafted(_load(stage1_run["last"]), fault), path)
    code, out, err = _run(_stage1_argv(embedded_data_dir, tmp_path / "run", "--resume", str(path)))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"train.py: error: --resume {path}: ") and message in err, err
    assert "Epoch [" not in out
