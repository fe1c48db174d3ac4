"""One GPU check of the whole project: ``make gpu-check`` (= ``python bench/gpu_check.py --out FILE``).

On a CUDA machine it runs, in about 8 minutes at most, the parts below and prints one markdown table
(also written to ``--out``); each part is a function with its own time budget (seconds, ``PARTS``), stops
its loops at that budget, and a part that no longer fits the total budget (``--budget``, 480 s) is
reported as skipped. A part that raises is one FAIL row, and the others still run.

1. environment: torch, CUDA, cuDNN, GPU, timm.
2. train throughput: TResNet-M (``create_model(model_name="tresnet_m", num_classes=80)``) at 448 px, batch
   64, Adam + our `PartialSelectiveLoss` (selective mode), images/s and peak memory
   (``torch.cuda.max_memory_allocated``) for fp16 AMP (with GradScaler) and bf16 AMP, each without and
   with channels_last. cuDNN autotuning stays off, as in train.py.
3. loss and mAP, CUDA vs CPU on the same inputs: value and gradient of `PartialSelectiveLoss` in the
   paper's four modes (float32, relative difference <= 1e-5), and `mean_average_precision` of the same
   scores given as CUDA or CPU tensors (equal) and of scores computed by sigmoid on each device
   (difference <= 1e-6 points).
4. exact resume: train.py (``train.main``) on a small embedded set (`generate_embedded_dataset`, 256 / 128
   images at 64 px, TResNet-M, fp16 AMP, 2 epochs) run whole, and run again pre-empted by SIGTERM at
   step 2 of epoch 2 and resumed with ``--resume last.pth``; weights, EMA, optimizer and scaler states and
   the per-epoch metrics must be identical (as tests/test_resume.py checks on CPU). It runs in its own
   process with cuDNN deterministic, ``torch.use_deterministic_algorithms(True, warn_only=True)`` and
   ``CUBLAS_WORKSPACE_CONFIG=:4096:8``: bit-exactness on a GPU needs deterministic kernels.
5. eval throughput: TResNet-M 448 forward under fp16 autocast, batch 128, with and without channels_last.
6. data-loader throughput: COCO-sized JPEGs (640 x 480, ``bench.bench_data.make_jpegs``) read by our
   `CocoDetection` with the 448 px train pipeline, 8 and 16 workers, batch 64, against the model's fp16
   training throughput of part 2: below it, training is input-bound.

Without CUDA it prints that there is no GPU and exits 0. The exit status is 1 when a check FAILs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402  (after the sys.path insert: run as bench/gpu_check.py)
import timm  # noqa: E402
import torch  # noqa: E402

import train  # noqa: E402
from bench.bench_data import make_jpegs  # noqa: E402
from src.callbacks import SigtermAtStep  # noqa: E402
from src.data.coco import CocoDetection  # noqa: E402
from src.data.embedded import generate_embedded_dataset  # noqa: E402
from src.data.transforms import build_train_transform  # noqa: E402
from src.loss_functions import PartialSelectiveLoss  # noqa: E402
from src.metrics import mean_average_precision  # noqa: E402
from src.models import create_model  # noqa: E402
from src.trainer import TrainingInterrupted  # noqa: E402
from src.utils.logging import read_metrics  # noqa: E402

NO_GPU_MESSAGE = "gpu-check: no GPU (torch.cuda.is_available() is False); nothing to check on this machine"
TOTAL_BUDGET_S = 480.0  # the whole run fits 8 minutes
LOSS_RTOL = 1e-5
MAP_ATOL = 1e-6  # mAP points
OK, FAIL, INFO, SKIPPED = "ok", "FAIL", "info", "skipped"
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
RESUME_MARKER = "@@RESUME@@"
PAPER_LOSS_MODES = ("negative", "ignore", "ignore_normalize_classes", "selective")  # the CSL paper's modes


@dataclass
class Row:
    part: str
    item: str
    result: str
    status: str = INFO
    seconds: float | None = None  # the part's time, on its first row


@dataclass
class Settings:
    """What the parts measure; the defaults are the GPU check's, tests pass tiny ones."""

    device: str = "cuda"
    model_name: str = "tresnet_m"
    num_classes: int = 80
    image_size: int = 448
    batch: int = 64
    eval_batch: int = 128
    warmup_steps: int = 3
    max_steps: int = 20
    loader_workers: tuple[int, ...] = (8, 16)
    loader_images: int = 256  # distinct JPEGs; the loader draws batches from them with replacement
    loader_batches: int = 24
    resume_model: str = "tresnet_m"
    resume_image_size: int = 64
    resume_train_images: int = 256
    resume_test_images: int = 128
    resume_batch: int = 32
    resume_amp: bool = True
    shared: dict = field(default_factory=dict)  # results one part hands to a later one


# ------------------------------------------------------------------------------------------ helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _mib(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value / 1024:.2f} GiB"


def _time_left(deadline: float) -> float:
    return deadline - time.perf_counter()


def _timed_steps(step, settings, device: torch.device, deadline: float) -> tuple[int, float]:
    """(steps, seconds) of ``step()`` run after ``settings.warmup_steps`` untimed ones, until
    ``settings.max_steps`` or the deadline (at least one step)."""
    for _ in range(settings.warmup_steps):
        step()
    _sync(device)
    steps, start = 0, time.perf_counter()
    while steps < settings.max_steps and (steps == 0 or _time_left(deadline) > 0):
        step()
        steps += 1
        if steps % 5 == 0:  # sync now and then so the deadline check sees real progress
            _sync(device)
    _sync(device)
    return steps, time.perf_counter() - start


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def format_table(rows: list[Row]) -> str:
    """The markdown table of ``rows`` (a '|' inside a cell is escaped)."""
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| part | item | result | status | time (s) |", "|---|---|---|---|---|"]
    for row in rows:
        seconds = "" if row.seconds is None else f"{row.seconds:.1f}"
        cells = (cell(row.part), cell(row.item), cell(row.result), row.status, seconds)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ 1. environment
def part_environment(settings: Settings, deadline: float) -> list[Row]:
    device = torch.device(settings.device)
    rows = [Row("environment", "torch / Python", f"{torch.__version__} / {platform.python_version()}"),
            Row("environment", "timm", timm.__version__)]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rows += [Row("environment", "CUDA (torch build)", str(torch.version.cuda)),
                 Row("environment", "cuDNN", str(torch.backends.cudnn.version())),
                 Row("environment", "GPU", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                     f"{props.multi_processor_count} SMs, capability {props.major}.{props.minor}; "
                     f"bf16 supported: {torch.cuda.is_bf16_supported()}")]
    else:
        rows.append(Row("environment", "device", f"{device} ({os.cpu_count()} CPU cores)"))
    return rows


# ------------------------------------------------------------------------------------------ 2. training
def _random_targets(batch: int, num_classes: int, device, generator=None) -> torch.Tensor:
    """Partial labels: ~5% positive, ~15% negative, the rest un-annotated (-1)."""
    draw = torch.rand(batch, num_classes, generator=generator)
    targets = torch.full((batch, num_classes), -1.0)
    targets[draw < 0.20] = 0.0
    targets[draw < 0.05] = 1.0
    return targets.to(device)


def train_throughput(settings: Settings, amp: str, channels_last: bool, deadline: float) -> dict:
    """Images/s of full training steps (forward, our loss, scaled backward, Adam) and the peak memory."""
    device = torch.device(settings.device)
    _reset_peak(device)
    torch.manual_seed(0)
    model = create_model(model_name=settings.model_name, num_classes=settings.num_classes,
                         channels_last=channels_last).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = PartialSelectiveLoss(partial_loss_mode="selective", likelihood_topk=5)
    dtype = AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")
    images = torch.rand(settings.batch, 3, settings.image_size, settings.image_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = _random_targets(settings.batch, settings.num_classes, device)

    def step():
        with torch.autocast(device.type, dtype=dtype):
            logits = model(images)
        loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    steps, seconds = _timed_steps(step, settings, device, deadline)
    return {"images_per_s": settings.batch * steps / seconds, "peak_mib": _peak_mib(device), "steps": steps}


def part_train_throughput(settings: Settings, deadline: float) -> list[Row]:
    configs = [(amp, cl) for amp in ("fp16", "bf16") for cl in (False, True)]
    rows = []
    for index, (amp, channels_last) in enumerate(configs):
        share = _time_left(deadline) / (len(configs) - index)  # each config gets its share of what is left
        result = train_throughput(settings, amp, channels_last, time.perf_counter() + share)
        if (amp, channels_last) == ("fp16", False):  # train.py's defaults on CUDA
            settings.shared["train_images_per_s"] = result["images_per_s"]
        settings.shared.setdefault("train_by_config", {})[(amp, channels_last)] = result["images_per_s"]
        what = (f"{settings.model_name} {settings.image_size}px b{settings.batch} {amp} AMP"
                f"{', channels_last' if channels_last else ''}")
        rows.append(Row("train throughput", what,
                        f"{result['images_per_s']:.1f} img/s, peak {_mib(result['peak_mib'])} "
                        f"({result['steps']} steps)"))
    return rows


# ------------------------------------------------------------------------------------------ 3. loss / mAP
def loss_and_grad(mode: str, logits: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor):
    criterion = PartialSelectiveLoss(partial_loss_mode=mode, prior=prior, prior_threshold=0.5,
                                     likelihood_topk=2, gamma_neg=3.0, gamma_unann=4.0).to(logits.device)
    logits = logits.detach().clone().requires_grad_(True)
    loss = criterion(logits, targets)
    loss.backward()
    return float(loss.item()), logits.grad.detach().cpu().double()


def compare_loss_and_map(device_name: str, reference: str = "cpu", seed: int = 0) -> list[Row]:
    """Our loss (every mode: value, gradient) and mAP on ``device_name`` against ``reference``."""
    generator = torch.Generator().manual_seed(seed)
    batch, classes = 64, 80
    logits = torch.randn(batch, classes, generator=generator) * 3
    targets = _random_targets(batch, classes, "cpu", generator)
    prior = torch.rand(classes, generator=generator)
    rows = []
    for mode in PAPER_LOSS_MODES:
        value_ref, grad_ref = loss_and_grad(mode, *(t.to(reference) for t in (logits, targets, prior)))
        value, grad = loss_and_grad(mode, *(t.to(device_name) for t in (logits, targets, prior)))
        rel = abs(value - value_ref) / max(abs(value_ref), 1e-12)
        grad_rel = float((grad - grad_ref).abs().max() / grad_ref.abs().max().clamp_min(1e-12))
        good = rel <= LOSS_RTOL and grad_rel <= LOSS_RTOL
        part = "loss CUDA = CPU" if device_name.startswith("cuda") else f"loss {device_name} = {reference}"
        rows.append(Row(part, f"PartialSelectiveLoss {mode}", f"loss {value:.6g} vs {value_ref:.6g} (rel "
                        f"{rel:.1e}), grad max rel diff {grad_rel:.1e}", OK if good else FAIL))
    full_targets = (torch.rand(500, classes, generator=generator) < 0.1).float()
    full_targets[torch.rand(500, classes, generator=generator) < 0.2] = -1  # ignored by the mAP
    raw = torch.randn(500, classes, generator=generator)
    scores = torch.sigmoid(raw)
    same_inputs = (mean_average_precision(full_targets.to(device_name), scores.to(device_name)),
                   mean_average_precision(full_targets.to(reference), scores.to(reference)))
    own_sigmoid = (mean_average_precision(full_targets, torch.sigmoid(raw.to(device_name))),
                   mean_average_precision(full_targets, torch.sigmoid(raw.to(reference))))
    diff = abs(own_sigmoid[0] - own_sigmoid[1])
    part = "mAP CUDA = CPU" if device_name.startswith("cuda") else f"mAP {device_name} = {reference}"
    rows.append(Row(part, "same scores as CUDA / CPU tensors",
                    f"{same_inputs[0]:.6f} vs {same_inputs[1]:.6f}",
                    OK if same_inputs[0] == same_inputs[1] else FAIL))
    rows.append(Row(part, "sigmoid computed on each device", f"{own_sigmoid[0]:.6f} vs {own_sigmoid[1]:.6f} "
                    f"(diff {diff:.1e} points)", OK if diff <= MAP_ATOL else FAIL))
    return rows


def part_loss_and_map(settings: Settings, deadline: float) -> list[Row]:
    return compare_loss_and_map(settings.device)


# ------------------------------------------------------------------------------------------ 4. resume
def resume_argv(data: str, dest: str, settings: dict, *extra: str) -> list[str]:
    amp = ["--amp", "--amp_dtype", "float16"] if settings["amp"] else ["--no-amp"]
    return ["--data", data, "--dataset_type", "coco", "--model-path", "none", "--model-name",
            settings["model"], "--num-classes", "48", "--image-size", str(settings["image_size"]), "--epochs",
            "2", "-b", str(settings["batch"]), "-j", "2", "--device", settings["device"], *amp,
            "--simulate_partial_type", "fpc", "--simulate_partial_param", "10", "--partial_loss_mode",
            "negative", "--estimate_prior", "running_average", "--ema_decay", "0.9", "--seed", "0",
            "--path_dest", dest, "--print-freq", "1000", *extra]


def compare_checkpoints(expected: dict, resumed: dict) -> dict:
    """Tensors (model, EMA, optimizer state, scaler) that differ and the largest absolute difference."""
    differing, largest = [], 0.0

    def visit(name, a, b):
        nonlocal largest
        if isinstance(a, torch.Tensor):
            if a.shape != b.shape or not torch.equal(a, b):
                differing.append(name)
                if a.shape == b.shape and a.is_floating_point():
                    largest = max(largest, float((a.double() - b.double()).abs().max()))
        elif isinstance(a, dict):
            for key in a:
                visit(f"{name}.{key}", a[key], b.get(key) if isinstance(b, dict) else None)
        elif a != b:
            differing.append(name)

    for key in ("model", "ema", "optimizer", "scaler", "scheduler", "train_prior"):
        visit(key, expected.get(key), resumed.get(key))
    return {"differing": differing, "max_abs_diff": largest}


def _metrics(dest: str) -> list[dict]:
    """The run's epochs without their timings (which differ between two runs of the same training)."""
    return [{k: v for k, v in epoch.items() if not k.endswith("time_s")} for epoch in read_metrics(dest)]



def resume_worker(settings: dict, workdir: str) -> dict:
    """In this process: the whole run, the pre-empted run and its resumption; returns the comparison."""
    if settings["device"].startswith("cuda"):  # bit-exact on a GPU needs deterministic kernels
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = os.path.join(workdir, "embedded")
    generate_embedded_dataset(data, n_train=settings["train_images"], n_test=settings["test_images"],
                              image_size=settings["image_size"], seed=0)
    steps_per_epoch = math.ceil(settings["train_images"] / settings["batch"])

    whole, interrupted = os.path.join(workdir, "whole"), os.path.join(workdir, "interrupted")
    started = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        train.main(resume_argv(data, whole, settings))
        try:
            # SIGTERM at step 2 of epoch 2: the resumed run starts from a mid-epoch checkpoint
            pre_empt = SigtermAtStep(steps_per_epoch + 2)
            train.main(resume_argv(data, interrupted, settings), callbacks=[pre_empt])
            raise RuntimeError("the SIGTERM callback did not interrupt the run")
        except TrainingInterrupted:
            pass
        train.main(resume_argv(data, interrupted, settings, "--resume",
                               os.path.join(interrupted, "last.pth")))
    expected, resumed = (torch.load(os.path.join(folder, "last.pth"), map_location="cpu", weights_only=True)
                         for folder in (whole, interrupted))
    comparison = compare_checkpoints(expected, resumed)
    same_metrics = _metrics(whole) == _metrics(interrupted)
    final = _metrics(whole)[-1]
    return {"exact": not comparison["differing"] and same_metrics, "same_metrics": same_metrics,
            "differing": comparison["differing"][:5], "n_differing": len(comparison["differing"]),
            "max_abs_diff": comparison["max_abs_diff"], "steps_per_epoch": steps_per_epoch,
            "final_metrics": {k: v for k, v in final.items() if isinstance(v, int | float)},
            "seconds": time.perf_counter() - started}


def run_resume_check(settings: dict, timeout: float) -> dict:
    """`resume_worker` in a fresh process (deterministic settings, its own CUDA context)."""
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="gpu_check_resume_") as workdir:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--resume-worker",
                               json.dumps(settings), "--workdir", workdir], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=max(timeout, 1.0))
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESUME_MARKER)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"resume worker exited {done.returncode}: {' / '.join(tail)}")
    return json.loads(lines[-1][len(RESUME_MARKER):])


def part_resume(settings: Settings, deadline: float) -> list[Row]:
    config = {"device": settings.device, "model": settings.resume_model,
              "image_size": settings.resume_image_size, "train_images": settings.resume_train_images,
              "test_images": settings.resume_test_images,
              "batch": settings.resume_batch, "amp": settings.resume_amp}
    try:
        result = run_resume_check(config, _time_left(deadline))
    except subprocess.TimeoutExpired:
        return [Row("resume", "train.py 2 epochs", "did not finish within its time budget", FAIL)]
    what = (f"train.py {config['model']} {config['image_size']}px, 2 epochs x {result['steps_per_epoch']} "
            f"steps, {'fp16 AMP' if config['amp'] else 'fp32'}; SIGTERM at step 2 of epoch 2, --resume")
    if result["exact"]:
        text = "bit-identical to the uninterrupted run (weights, EMA, optimizer, scaler, metrics)"
    else:
        text = (f"{result['n_differing']} tensors differ (e.g. {result['differing']}), max abs diff "
                f"{result['max_abs_diff']:.2e}; metrics equal: {result['same_metrics']}")
    final = result["final_metrics"]
    rows = [Row("resume", what, text, OK if result["exact"] else FAIL)]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in list(final.items())[:4])
    rows.append(Row("resume", "last epoch of the run", shown or "-"))
    return rows


# ------------------------------------------------------------------------------------------ 5. evaluation
@torch.inference_mode()
def eval_throughput(settings: Settings, channels_last: bool, deadline: float) -> float:
    device = torch.device(settings.device)
    model = create_model(model_name=settings.model_name, num_classes=settings.num_classes,
                         channels_last=channels_last).to(device).eval()
    images = torch.rand(settings.eval_batch, 3, settings.image_size, settings.image_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    dtype = AMP_DTYPES["fp16"] if device.type == "cuda" else AMP_DTYPES["bf16"]

    def forward():
        with torch.autocast(device.type, dtype=dtype):
            return torch.sigmoid(model(images).float())

    steps, seconds = _timed_steps(forward, settings, device, deadline)
    return settings.eval_batch * steps / seconds


def part_eval_throughput(settings: Settings, deadline: float) -> list[Row]:
    rows = []
    for index, channels_last in enumerate((False, True)):
        share = _time_left(deadline) / (2 - index)
        rate = eval_throughput(settings, channels_last, time.perf_counter() + share)
        amp = "fp16" if settings.device.startswith("cuda") else "bf16"
        what = (f"{settings.model_name} {settings.image_size}px b{settings.eval_batch} {amp} AMP"
                f"{', channels_last' if channels_last else ''}")
        rows.append(Row("eval throughput", what, f"{rate:.1f} img/s"))
    return rows


# ------------------------------------------------------------------------------------------ 6. data loading
def write_coco_folder(folder: str, count: int, num_classes: int = 80, seed: int = 0) -> str:
    """``count`` COCO-sized JPEGs and an instances JSON naming them (each with 1-3 labels)."""
    paths = make_jpegs(folder, count, seed=seed)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id, path in enumerate(paths, 1):
        images.append({"id": image_id, "file_name": os.path.basename(path), "width": 640, "height": 480})
        for category in rng.choice(num_classes, size=int(rng.integers(1, 4)), replace=False):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(category) + 1, "bbox": [0, 0, 10, 10], "area": 100.0,
                                "iscrowd": 0})
    categories = [{"id": c + 1, "name": f"class_{c}"} for c in range(num_classes)]
    ann_file = os.path.join(folder, "instances.json")
    with open(ann_file, "w", encoding="utf-8") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)
    return ann_file


def loader_throughput(dataset, workers: int, batch: int, batches: int, deadline: float, pin: bool) -> float:
    """Images/s of a DataLoader after its first batch (worker start-up excluded)."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * (batches + 1),
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                         pin_memory=pin, persistent_workers=False)
    iterator = iter(loader)
    next(iterator)  # start-up: the workers' first batches
    count, start = 0, time.perf_counter()
    for images, _ in iterator:
        count += images.shape[0]
        if _time_left(deadline) <= 0:
            break
    seconds = time.perf_counter() - start
    del iterator
    return count / seconds if seconds > 0 else float("nan")


def part_loader(settings: Settings, deadline: float) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_jpegs_") as folder:
        made = time.perf_counter()
        ann_file = write_coco_folder(folder, settings.loader_images)
        dataset = CocoDetection(folder, ann_file, transform=build_train_transform(settings.image_size))
        made = time.perf_counter() - made
        model_rate = settings.shared.get("train_images_per_s")
        for index, workers in enumerate(settings.loader_workers):
            share = _time_left(deadline) / (len(settings.loader_workers) - index)
            rate = loader_throughput(dataset, workers, settings.batch, settings.loader_batches,
                                     time.perf_counter() + share, pin=settings.device.startswith("cuda"))
            if model_rate:
                verdict = (f"; the model trains at {model_rate:.0f} img/s (fp16): "
                           + ("INPUT-BOUND" if rate < model_rate else "not input-bound"))
            else:
                verdict = "; no model throughput to compare (part 2 did not run)"
            rows.append(Row("data loader", f"{workers} workers, train pipeline {settings.image_size}px, "
                                           f"640x480 JPEGs, b{settings.batch}", f"{rate:.0f} img/s{verdict}"))
        rows.append(Row("data loader", "set-up", f"{settings.loader_images} JPEGs written in {made:.1f} s"))
    return rows


# ------------------------------------------------------------------------------------------ runner
@dataclass
class Part:
    name: str
    budget_s: float
    run: Callable[[Settings, float], list[Row]]


PARTS = [
    Part("environment", 10, part_environment),
    Part("train throughput", 150, part_train_throughput),
    Part("loss and mAP", 20, part_loss_and_map),
    Part("resume", 150, part_resume),
    Part("eval throughput", 40, part_eval_throughput),
    Part("data loader", 100, part_loader),
]


def run_parts(parts: list[Part], settings: Settings, total_budget: float = TOTAL_BUDGET_S,
              echo: Callable[[str], None] = print) -> list[Row]:
    """Each part within min(its budget, what is left of ``total_budget``); errors become FAIL rows."""
    start = time.perf_counter()
    rows = []
    for part in parts:
        left = total_budget - (time.perf_counter() - start)
        if left < min(part.budget_s, 5.0):
            rows.append(Row(part.name, "-", f"skipped: {max(left, 0):.0f} s left of the {total_budget:.0f} s "
                                            "budget", SKIPPED))
            continue
        echo(f"gpu-check: {part.name} (budget {min(part.budget_s, left):.0f} s) ...")
        began = time.perf_counter()
        try:
            produced = part.run(settings, began + min(part.budget_s, left))
        except Exception as error:  # one broken part must not hide the others' results
            produced = [Row(part.name, "error", _first_line(error), FAIL)]
        seconds = time.perf_counter() - began
        if seconds > part.budget_s * 1.25:
            produced.append(Row(part.name, "time", f"took {seconds:.0f} s, over its {part.budget_s:.0f} s "
                                "budget", INFO))
        if produced:
            produced[0].seconds = seconds
        rows += produced
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="total seconds (default 480)")
    parser.add_argument("--parts", nargs="+", choices=[p.name.split()[0] for p in PARTS], default=None,
                        help="run only these parts (first word of their names)")
    parser.add_argument("--resume-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.resume_worker:  # the subprocess of part 4
        result = resume_worker(json.loads(args.resume_worker), args.workdir)
        print(RESUME_MARKER + json.dumps(result), flush=True)
        return 0
    if not torch.cuda.is_available():
        print(NO_GPU_MESSAGE)
        return 0
    parts = [p for p in PARTS if args.parts is None or p.name.split()[0] in args.parts]
    started = time.perf_counter()
    rows = run_parts(parts, Settings(), args.budget)
    table = format_table(rows)
    failed = [row for row in rows if row.status == FAIL]
    summary = (f"\n{len(rows)} rows in {time.perf_counter() - started:.0f} s; "
               + (f"{len(failed)} FAILED: {', '.join(r.part + ' / ' + r.item for r in failed)}" if failed
                  else "every check passed"))
    print("\n" + table + summary)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"# GPU check\n\n{table}\n{summary.strip()}\n", encoding="utf-8")
        print(f"written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
