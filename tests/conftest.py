"""Shared fixtures of the training / evaluation tests (train.py, validate.py, infer.py, DDP).

Stable names, reused by several test files:

- ``embedded_data_dir`` (session): a tiny embedded dataset in the COCO layout (96 train and 48 val
  images of 32 x 32 px, 48 classes, seed 0), written once per session by
  ``src.data.embedded.generate_embedded_dataset``; pass it as ``--data``.
- ``TINY_MODEL`` / ``EMBEDDED_NUM_CLASSES``: timm's ``test_resnet`` (0.4 M parameters, the fastest
  timm model at 32 px on CPU) and the dataset's class count.
- ``tiny_train_argv(data_dir, path_dest, *extra)``: a complete train.py argument list for that
  dataset (CPU, no pretrained weights, 1 epoch, batch 16, workers 0, fpc-10 simulation); ``extra``
  flags are appended (argparse keeps the last value of a repeated flag).
- ``single_thread()`` (context manager) / ``torch_single_thread`` (fixture): torch on one thread
  while inside. On the shared 2-core machine two processes with 2 OpenMP threads each make tiny
  models up to 10x slower (threads spin-wait for each other); subprocesses get OMP_NUM_THREADS=1
  (``SINGLE_THREAD_ENV``).
- ``stage1_run`` (session): train.py stage 1 (``--partial_loss_mode ignore``, 2 epochs) run
  in-process; a dict with ``path_dest``, ``best`` / ``last`` (checkpoint paths), ``prior``
  (the prior CSV it wrote), ``summary`` (train.main's return value), ``stdout`` (what it printed)
  and ``seconds``.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import time

import pytest

TINY_MODEL = "test_resnet"
EMBEDDED_NUM_CLASSES = 48
TINY_IMAGE_SIZE = 32
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def single_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_in_this_process(command, log_path, env):
    """`runner.run_logged` without a new interpreter per step: the same train.py / coco_simulation argv, run
    here (reproduce.py's process boundary - groups, signals, exit codes - is tested with real processes in
    tests/test_bad_inputs_writers.py and test_a_failed_cell_*)."""
    import shlex

    import coco_simulation.__main__ as simulation
    import train
    from src.reproduce import runner

    print("$ " + shlex.join(command), flush=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
            single_thread():
        if runner.TRAIN_SCRIPT in command:
            train.main(command[command.index(runner.TRAIN_SCRIPT) + 1:])
        else:
            simulation.main(command[command.index("coco_simulation") + 1:])


@pytest.fixture
def torch_single_thread():
    with single_thread():
        yield


def tiny_train_argv(data_dir, path_dest, *extra: str) -> list[str]:
    return [
        "--data", str(data_dir), "--dataset_type", "coco", "--model-path", "none",
        "--model-name", TINY_MODEL, "--num-classes", str(EMBEDDED_NUM_CLASSES),
        "--image-size", str(TINY_IMAGE_SIZE), "--epochs", "1", "-b", "16", "-j", "0", "--device", "cpu",
        "--simulate_partial_type", "fpc", "--simulate_partial_param", "10", "--seed", "0",
        "--path_dest", str(path_dest), "--print-freq", "100", *extra,
    ]


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory):
    from src.data.embedded import generate_embedded_dataset

    out = tmp_path_factory.mktemp("embedded")
    generate_embedded_dataset(str(out), n_train=96, n_test=48, image_size=TINY_IMAGE_SIZE, seed=0)
    return str(out)


@pytest.fixture(scope="session")
def stage1_run(embedded_data_dir, tmp_path_factory):
    import train

    path_dest = tmp_path_factory.mktemp("stage1")
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as stdout, single_thread():
        summary = train.main(tiny_train_argv(embedded_data_dir, path_dest, "--epochs", "2",
                                             "--partial_loss_mode", "ignore"))
    seconds = time.perf_counter() - started
    prior = os.path.join(path_dest, "priors", "prior_fpc_10.csv")
    return {"path_dest": str(path_dest), "best": os.path.join(path_dest, "best.pth"),
            "last": os.path.join(path_dest, "last.pth"), "prior": prior, "summary": summary,
            "seconds": seconds, "stdout": stdout.getvalue()}


def pytest_collection_modifyitems(config, items):
    """The end-to-end runs marked slow first: spread over the xdist workers from the start (make test runs
    with -n 2), they do not leave one worker finishing a minute-long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def train_py_signalled_at_first_step(argv, send, timeout_s: float, **popen) -> tuple[int, str]:
    """Run ``python -u train.py argv`` (single-threaded), call ``send(process)`` once the first training
    step is printed ("Epoch [1/...": the signal handlers are installed), and return its exit status and
    everything it printed. A run still going after ``timeout_s`` is killed: it fails, never hangs."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, "-u", "train.py", *argv], cwd=repo, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=dict(os.environ, **SINGLE_THREAD_ENV),
                               **popen)
    watchdog = threading.Timer(timeout_s, process.kill)
    watchdog.start()
    try:
        output = []
        for line in process.stdout:
            output.append(line)
            if line.startswith("Epoch [1/"):
                send(process)
                break
        output.extend(process.stdout)
        returncode = process.wait()
    finally:
        watchdog.cancel()
        process.stdout.close()
    return returncode, "".join(output)
