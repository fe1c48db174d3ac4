"""bench/gpu_check.py on a machine without a GPU: the no-GPU exit, the table, the time budgets, and the
parts that also run on CPU (on tiny inputs): training / evaluation / data-loader throughput, the CPU side
of the loss and mAP comparison, the checkpoint comparison and the exact-resume worker."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from bench import gpu_check
from bench.gpu_check import FAIL, INFO, OK, SKIPPED, Part, Row, Settings
from src.loss_functions import PartialSelectiveLoss
from src.metrics import mean_average_precision
from tests.conftest import TINY_IMAGE_SIZE, TINY_MODEL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_settings(**changes) -> Settings:
    values = dict(device="cpu", model_name=TINY_MODEL, num_classes=4, image_size=TINY_IMAGE_SIZE, batch=2,
                  eval_batch=2, warmup_steps=1, max_steps=2, loader_workers=(0,), loader_images=3,
                  loader_batches=2)
    values.update(changes)
    return Settings(**values)


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    assert gpu_check.main(["--out", str(tmp_path / "table.md")]) == 0
    assert capsys.readouterr().out.strip() == gpu_check.NO_GPU_MESSAGE
    assert not (tmp_path / "table.md").exists()


def test_make_target_runs_the_check():
    makefile = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    assert "gpu-check:" in makefile and "bench/gpu_check.py" in makefile
    assert "gpu-check" in makefile.split(".PHONY:")[1].splitlines()[0]


def test_table_is_markdown_with_escaped_cells():
    rows = [Row("env", "torch", "2.x", INFO, 0.04), Row("loss", "a | b", "1 vs 1", OK),
            Row("x", "y", "z", FAIL)]
    lines = gpu_check.format_table(rows).splitlines()
    assert lines[0] == "| part | item | result | status | time (s) |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| env | torch | 2.x | info | 0.0 |"
    assert lines[3] == "| loss | a \\| b | 1 vs 1 | ok |  |"  # a '|' in a cell does not split it
    assert lines[4] == "| x | y | z | FAIL |  |" and len(lines) == 5


def test_parts_get_their_budget_errors_are_rows_and_late_parts_are_skipped():
    seen = {}

    def quick(settings, deadline):
        seen["quick"] = deadline - time.perf_counter()
        return [Row("quick", "a", "1"), Row("quick", "b", "2")]

    def broken(settings, deadline):
        raise RuntimeError("no kernel image\nsecond line")

    def slow(settings, deadline):
        seen["slow"] = deadline - time.perf_counter()
        time.sleep(1.5)
        return [Row("slow", "c", "3")]

    parts = [Part("quick", 0.5, quick), Part("broken", 0.5, broken), Part("slow", 60.0, slow),
             Part("late", 10.0, quick)]
    rows = gpu_check.run_parts(parts, Settings(device="cpu"), total_budget=6.0, echo=lambda text: None)
    assert 0.4 < seen["quick"] <= 0.5  # its own budget
    assert 5.0 < seen["slow"] <= 6.0  # what is left of the total, less than its own 60 s
    assert [(r.part, r.item, r.status) for r in rows] == [
        ("quick", "a", INFO), ("quick", "b", INFO), ("broken", "error", FAIL), ("slow", "c", INFO),
        ("late", "-", SKIPPED)]  # ~4.5 s left: less than the 5 s a part needs at least
    assert rows[2].result == "RuntimeError: no kernel image"  # first line only
    assert rows[0].seconds is not None and rows[1].seconds is None  # the part's time on its first row
    assert rows[3].seconds >= 1.5 and "of the 6 s budget" in rows[4].result


def test_main_writes_the_table_and_fails_on_a_failed_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "PARTS", [Part("good", 5, lambda s, d: [Row("good", "x", "fine", OK)]),
                                             Part("bad", 5, lambda s, d: [Row("bad", "y", "differs", FAIL)])])
    out = tmp_path / "results" / "gpu.md"
    assert gpu_check.main(["--out", str(out)]) == 1
    printed = capsys.readouterr().out
    text = out.read_text()
    assert "| good | x | fine | ok |" in printed and "| good | x | fine | ok |" in text
    assert "1 FAILED: bad / y" in printed and "1 FAILED: bad / y" in text
    monkeypatch.setattr(gpu_check, "PARTS", gpu_check.PARTS[:1])
    assert gpu_check.main([]) == 0 and "every check passed" in capsys.readouterr().out


def test_loss_and_map_cpu_side_agree_and_a_difference_is_flagged(monkeypatch):
    rows = gpu_check.compare_loss_and_map("cpu")
    assert [r.item for r in rows] == [f"PartialSelectiveLoss {m}" for m in gpu_check.PAPER_LOSS_MODES] + [
        "same scores as CUDA / CPU tensors", "sigmoid computed on each device"]
    assert all(r.status == OK for r in rows), [r.result for r in rows if r.status != OK]
    # The compared numbers are our loss and mAP on the same inputs (independently recomputed here).
    logits, targets = torch.randn(8, 5), torch.tensor([[1.0, 0, -1, -1, 0]] * 8)
    value, grad = gpu_check.loss_and_grad("negative", logits, targets, torch.rand(5))
    criterion = PartialSelectiveLoss(partial_loss_mode="negative", gamma_neg=3.0, gamma_unann=4.0)
    expected = criterion(logits, targets)
    assert value == pytest.approx(float(expected), rel=1e-6) and grad.shape == (8, 5)
    # A device whose loss is 1% off fails its row (and only that check).
    real = gpu_check.loss_and_grad
    calls = []

    def off_on_the_second_call(mode, logits, targets, prior):
        value, grad = real(mode, logits, targets, prior)
        calls.append(mode)
        return (value * 1.01, grad) if len(calls) == 2 else (value, grad)

    monkeypatch.setattr(gpu_check, "loss_and_grad", off_on_the_second_call)
    rows = gpu_check.compare_loss_and_map("cpu")
    assert [r.status for r in rows[:2]] == [FAIL, OK] and "rel 1.0e-02" in rows[0].result
    scores = np.random.default_rng(0).random((20, 3))
    labels = (scores > 0.5).astype(np.int8)
    assert mean_average_precision(torch.from_numpy(labels), torch.from_numpy(scores)) == 100.0


def test_train_and_eval_throughput_run_on_cpu():
    settings = tiny_settings()
    result = gpu_check.train_throughput(settings, "bf16", True, time.perf_counter() + 30)
    assert result["steps"] == 2 and result["images_per_s"] > 0 and result["peak_mib"] is None
    rows = gpu_check.part_train_throughput(settings, time.perf_counter() + 60)
    assert [r.item for r in rows] == [f"{TINY_MODEL} 32px b2 {amp} AMP{cl}" for amp in ("fp16", "bf16")
                                      for cl in ("", ", channels_last")]
    assert settings.shared["train_images_per_s"] > 0  # handed to the data-loader part
    assert "peak n/a (CPU)" in rows[0].result
    assert gpu_check.eval_throughput(settings, False, time.perf_counter() + 30) > 0
    # The step loop stops at the deadline (after at least one step), not at max_steps.
    slow = tiny_settings(max_steps=10_000)
    assert gpu_check.train_throughput(slow, "bf16", False, time.perf_counter())["steps"] in range(1, 6)


def test_loader_throughput_compares_with_the_model(monkeypatch):
    settings = tiny_settings()
    settings.shared["train_images_per_s"] = 1e9  # a model no loader keeps up with
    rows = gpu_check.part_loader(settings, time.perf_counter() + 60)
    assert rows[0].item.startswith("0 workers, train pipeline 32px") and "INPUT-BOUND" in rows[0].result
    settings.shared["train_images_per_s"] = 1e-9
    rows = gpu_check.part_loader(settings, time.perf_counter() + 60)
    assert "not input-bound" in rows[0].result and float(rows[0].result.split()[0]) > 0
    assert "3 JPEGs written" in rows[-1].result


def test_checkpoint_comparison_names_what_differs():
    state = {"model": {"w": torch.ones(3), "n": torch.tensor(2)}, "ema": {"w": torch.zeros(2)},
             "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]},
             "scaler": {"scale": 65536.0}}
    same = {k: v for k, v in state.items()}
    assert gpu_check.compare_checkpoints(state, same) == {"differing": [], "max_abs_diff": 0.0}
    changed = {**state, "model": {"w": torch.tensor([1.0, 1.25, 1.0]), "n": torch.tensor(2)},
               "scaler": {"scale": 32768.0}}
    result = gpu_check.compare_checkpoints(state, changed)
    assert result["differing"] == ["model.w", "scaler.scale"] and result["max_abs_diff"] == 0.25


@pytest.mark.slow
def test_resume_worker_is_exact_on_cpu(tmp_path, torch_single_thread):
    """The GPU check's resume part, here on CPU with the tiny model: whole run == pre-empted + resumed."""
    config = {"device": "cpu", "model": TINY_MODEL, "image_size": TINY_IMAGE_SIZE, "train_images": 96,
              "test_images": 48, "batch": 16, "amp": False}
    result = gpu_check.resume_worker(config, str(tmp_path))
    assert result["steps_per_epoch"] == 6
    assert result["exact"] and result["same_metrics"] and result["n_differing"] == 0, result
    assert os.path.isfile(tmp_path / "interrupted" / "last.pth")
