"""train.py: the paper's CLI, configuration errors, outputs and the two-stage CSL smoke run."""

from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from src.loss_functions import LOSS_MODES
from src.trainer import PAPER_PROTOCOL, last_epoch
from src.utils.cli import run_cli
from tests.conftest import EMBEDDED_NUM_CLASSES, tiny_train_argv

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every flag of the paper's train.py (Alibaba-MIIL/PartialLabelingCSL) with its default there.
PAPER_DEFAULTS = {
    "--data": "./data", "--metadata": "./data/COCO_2014", "--lr": 2e-4, "--epochs": 30, "--stop_epoch": None,
    "--weight_decay": 1e-4, "--model-name": "tresnet_m", "--model-path": "./tresnet_m.pth",
    "--num-classes": 80, "--workers": min(8, os.cpu_count()), "--image-size": 448,  # 8, at most the cores
    "--simulate_partial_type": None,
    "--simulate_partial_param": 1000, "--partial_loss_mode": "negative", "--clip": 0, "--gamma_pos": 0,
    "--gamma_neg": 1, "--gamma_unann": 2, "--alpha_pos": 1, "--alpha_neg": 1, "--alpha_unann": 1,
    "--likelihood_topk": 5, "--prior_path": None, "--prior_threshold": 0.05, "--batch-size": 64,
    "--print-freq": 64, "--path_dest": None, "--debug_mode": "hyperml",  # None: ./outputs/<fresh folder>
}
NEW_FLAGS = ("--device", "--amp", "--no-amp", "--amp_dtype", "--seed", "--resume", "--dataset_type",
             "--partial_labels", "--val_split", "--ema_decay", "--skip_bad_images", "--do_bottleneck_head",
             "--grad_checkpointing", "--channels_last", "--compile", "--sync_bn", "--estimate_prior")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _swap(flag: str) -> str:
    body = flag[2:]
    return "--" + (body.replace("_", "-") if "_" in body else body.replace("-", "_"))


def test_help_lists_every_paper_flag_in_both_spellings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    # Whole option strings, not substrings ("-b" is inside "--batch-size"): each must stand alone.
    listed = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))
    for flag in (*PAPER_DEFAULTS, *NEW_FLAGS, "-j", "-b", "-p"):
        assert flag in listed, flag
    for flag in PAPER_DEFAULTS:
        if "_" in flag or "-" in flag[2:]:
            assert _swap(flag) in listed, _swap(flag)
    assert "-q" not in listed  # the check can fail: a flag train.py does not have is not found


def test_defaults_match_the_paper_and_both_spellings_set_the_same_field():
    defaults = vars(train.parse_args([]))
    for flag, value in PAPER_DEFAULTS.items():
        assert defaults[_dest(flag)] == value, flag
    for flag in (*PAPER_DEFAULTS, "--val_split", "--ema_decay", "--amp_dtype", "--dataset_type"):
        if _swap(flag) == flag:
            continue  # no separator (--data, --lr, ...): one spelling only
        value = {"--val_split": "0.5", "--amp_dtype": "bfloat16", "--dataset_type": "lvis",
                 "--simulate_partial_type": "rps", "--partial_loss_mode": "ignore",
                 "--prior_threshold": "0.3", "--ema_decay": "0.5"}.get(flag, "3")
        one, other = vars(train.parse_args([flag, value])), vars(train.parse_args([_swap(flag), value]))
        assert one == other and one != defaults, flag


def test_missing_model_path_is_the_first_error(tmp_path):
    argv = ["--data", str(tmp_path / "no_data"), "--model-path", str(tmp_path / "missing.pth"),
            "--prior_path", str(tmp_path / "missing.csv"), "--path_dest", str(tmp_path / "out")]
    with pytest.raises(train.ConfigError, match="--model-path none"):
        train.main(argv)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


@pytest.mark.parametrize("flag, value, message", [
    ("--partial_loss_mode", "bogus", "invalid choice: 'bogus'.*selective"),
    ("--likelihood_topk", "-1", "must be >= 0"),
    ("--prior_threshold", "1.5", "must be a probability in"),
    ("--ema_decay", "1.0", r"must be in \[0, 1\)"),
    ("--simulate_partial_type", "half", "invalid choice: 'half'.*fpc"),
])
def test_flag_values_that_cannot_work_are_usage_errors(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args([flag, value])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("extra, message", [
    (["--prior_path", "/nonexistent/prior.csv"], "--prior_path"),
    (["--resume", "/nonexistent/last.pth"], "--resume"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--sync_bn"], "CUDA"),
    (["--amp", "--amp_dtype", "float16"], "float16 needs a CUDA device"),
    (["--sync_bn"], "--sync_bn needs CUDA"),
])
def test_configuration_errors_before_data_is_read(tmp_path, extra, message):
    argv = ["--data", str(tmp_path / "no_data"), "--model-path", "none", "--device", "cpu",
            "--path_dest", str(tmp_path / "out"), *extra]
    with pytest.raises(train.ConfigError, match=message):
        train.main(argv)
    assert not (tmp_path / "out").exists()


def test_stop_epoch_beyond_epochs_means_no_early_stop(capsys):
    args = train.parse_args(["--model-path", "none", "--epochs", "2", "--stop_epoch", "3"])
    train.check_args(args)
    assert last_epoch(args.epochs, args.stop_epoch) == 2 and "no early stop, all 2 epochs run" in \
        capsys.readouterr().err
    assert last_epoch(3, 2) == 2 and last_epoch(3, None) == 3


@pytest.mark.parametrize("dataset_type, flag, expected", [
    ("openimages", [], True), ("coco", [], False), ("lvis", [], False),
    ("openimages", ["--no-do_bottleneck_head"], False), ("coco", ["--do_bottleneck_head"], True),
])
def test_bottleneck_head_defaults_to_the_papers_openimages_models(dataset_type, flag, expected):
    args = train.parse_args(["--dataset_type", dataset_type, *flag])
    assert train.resolved_config(args)["do_bottleneck_head"] is expected


@pytest.mark.parametrize("changed, key", [
    (["--prior_path", "other.csv"], "prior_path"), (["-j", "2"], "workers"), (["--lr", "1e-3"], "lr"),
    (["--hill_lambda", "2"], "hill_lambda"), (["--splc_tau", "0.7"], "splc_tau"),
    (["--gr_q2", "0.1"], "gr_q2"), (["--loss_reduction", "mean"], "loss_reduction"),
    (["--gamma_neg", "3"], "gamma_neg"),
])
def test_resume_refuses_a_changed_setting(changed, key):
    from src.trainer import check_resume_compatible
    from src.utils.distributed import DistributedContext

    base = ["--model-path", "none", "--prior_path", "prior.csv", "-j", "0", "--resume", "last.pth"]
    owners = [mode for mode, info in LOSS_MODES.items() if key in info.hyperparameters]
    base += ["--partial_loss_mode", owners[0]] if owners else []  # a mode's flag is refused for the others
    saved = {"args": train.resolved_config(train.parse_args(base))}
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    config = train.resolved_config(train.parse_args(base))  # what the Trainer compares
    check_resume_compatible(saved, config, ctx, "last.pth")  # same settings: fine
    changed_config = train.resolved_config(train.parse_args(base + changed))
    with pytest.raises(train.ConfigError, match=f"--{key}: checkpoint"):
        check_resume_compatible(saved, changed_config, ctx, "last.pth")


def test_resume_checks_every_loss_setting_and_reads_checkpoints_older_than_a_flag():
    from src.loss_functions import LOSS_HYPERPARAMETERS
    from src.trainer import check_resume_compatible
    from src.utils.distributed import DistributedContext

    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    config = train.resolved_config(train.parse_args(["--model-path", "none"]))
    loss_settings = ("partial_loss_mode", "prior_path", "loss_reduction", *LOSS_HYPERPARAMETERS)
    for key in loss_settings:
        with pytest.raises(train.ConfigError, match=f"--{key}: checkpoint"):
            check_resume_compatible({"args": config}, {**config, key: "changed"}, ctx, "last.pth")
    # A checkpoint written before a loss flag existed ran with that flag's default.
    older = {key: value for key, value in config.items() if key not in ("hill_lambda", "loss_reduction")}
    check_resume_compatible({"args": older}, config, ctx, "last.pth")
    with pytest.raises(train.ConfigError, match="--hill_lambda: checkpoint 1.5, now 2.0"):
        check_resume_compatible({"args": older}, {**config, "hill_lambda": 2.0}, ctx, "last.pth")


def test_checkpoints_of_the_0_based_format_are_read_counted_from_1():
    from src.trainer import CHECKPOINT_FORMAT, count_epochs_from_one

    old = {"epoch": 1, "steps_done": 6, "best": {"epoch": 0, "metric": 9.0},
           "history": [{"epoch": 0, "best_epoch": 0}, {"epoch": 1, "best_epoch": 0}]}
    new = count_epochs_from_one(old)
    assert (new["epoch"], new["best"], new["format_version"]) == (2, {"epoch": 1, "metric": 9.0}, 2)
    assert new["history"] == [{"epoch": 1, "best_epoch": 1}, {"epoch": 2, "best_epoch": 1}]
    assert old["epoch"] == 1 and old["history"][0]["epoch"] == 0  # the loaded dict is not changed
    assert count_epochs_from_one(new) is new and CHECKPOINT_FORMAT == 2  # already counted from 1
    no_best = {"epoch": 0, "best": {"epoch": None}, "history": [{"epoch": 0, "best_epoch": None}]}
    assert count_epochs_from_one(no_best)["history"] == [{"epoch": 1, "best_epoch": None}]


def test_the_trainer_is_built_with_the_wrapped_model(embedded_data_dir, tmp_path, monkeypatch):
    """The model as trained (the DDP/compile wrapper) is built first and handed to the Trainer; the
    Trainer checkpoints the plain module inside it. Nothing is swapped after construction."""
    import src.trainer
    from src.utils.distributed import DistributedContext

    class Wrapper(torch.nn.Module):  # what torch.compile returns: the module under ``_orig_mod``
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, images):
            return self._orig_mod(images)

    at_construction = []

    class RecordingTrainer(src.trainer.Trainer):
        def __init__(self, parts, *args, **kwargs):
            at_construction.append(parts.model)
            super().__init__(parts, *args, **kwargs)

    monkeypatch.setattr(train, "maybe_compile", lambda model, enabled, device: Wrapper(model))
    monkeypatch.setattr(train, "Trainer", RecordingTrainer)
    args = train.parse_args(tiny_train_argv(embedded_data_dir, tmp_path / "run"))
    trainer = train.build_trainer(args, DistributedContext(device=torch.device("cpu")))
    assert isinstance(at_construction[0], Wrapper) and trainer.parts.model is at_construction[0]
    assert trainer.model is at_construction[0]._orig_mod and not isinstance(trainer.model, Wrapper)


def test_dataset_and_num_classes_mismatch(embedded_data_dir, tmp_path):
    argv = tiny_train_argv(embedded_data_dir, tmp_path / "out", "--num-classes", "80")
    with pytest.raises(train.ConfigError, match=f"pass --num-classes {EMBEDDED_NUM_CLASSES}"):
        train.main(argv)
    assert not (tmp_path / "out").exists()


def test_prior_with_other_classes_is_rejected(embedded_data_dir, tmp_path):
    prior = tmp_path / "prior.csv"
    pd.DataFrame({"Classes": [f"cls{i}" for i in range(EMBEDDED_NUM_CLASSES)],
                  "avg_pred": np.full(EMBEDDED_NUM_CLASSES, 0.1)}).to_csv(prior, index=False)
    argv = tiny_train_argv(embedded_data_dir, tmp_path / "out", "--partial_loss_mode", "selective",
                           "--prior_path", str(prior))
    with pytest.raises(train.ConfigError, match="prior"):
        train.main(argv)
    assert not (tmp_path / "out").exists()


def test_cli_prints_error_and_exits_2(tmp_path, capsys):
    """train.py's entry point is ``sys.exit(run_cli(main, prog="train.py"))``: the exit status is this."""
    assert run_cli(train.main, ["--model-path", str(tmp_path / "x.pth")], prog="train.py") == 2
    err = capsys.readouterr().err
    assert "train.py: error: --model-path" in err and "Traceback" not in err


def test_durations_read_naturally():
    from src.utils.logging import format_duration

    assert [format_duration(s) for s in (3.2, 89, 90, 3000, 5400, 9000)] == \
        ["3 s", "89 s", "2 min", "50 min", "1.5 h", "2.5 h"]


def test_weight_decay_only_on_weights_and_one_cycle_over_all_epochs():
    from src.models import create_model

    model = create_model(model_name="test_resnet", num_classes=5)
    args = train.parse_args(["--epochs", "3", "--lr", "1e-3", "--weight_decay", "0.01"])
    optimizer, scheduler, scaler = train.build_optimization(model, args, 4, None, torch.device("cpu"))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in decayed) == (param.ndim > 1 and not name.endswith(".bias")), name
    assert scheduler.total_steps == 12 and not scaler.is_enabled()
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3 / 25)  # OneCycle starts at max_lr / 25
    lrs = []
    for _ in range(11):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert max(lrs) <= 1e-3 and int(np.argmax(lrs)) in (0, 1)  # warm-up over 20% of the 12 steps
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1e4)  # annealed to the minimum at the last step


def _metrics_lines(path_dest):
    with open(os.path.join(path_dest, "metrics.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_stage1_outputs(stage1_run, embedded_data_dir):
    dest = stage1_run["path_dest"]
    with open(os.path.join(dest, "args.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    assert config["partial_loss_mode"] == "ignore" and config["epochs"] == 2 and config["lr"] == 2e-4
    assert config["resolved_device"] == "cpu" and config["resolved_amp_dtype"] is None
    assert "git_commit" in config and len(config["class_names"]) == EMBEDDED_NUM_CLASSES
    assert config["selection_protocol"] == PAPER_PROTOCOL
    assert config["steps_per_epoch"] == 6 and config["num_train_images"] == 96

    lines = _metrics_lines(dest)
    assert [line["epoch"] for line in lines] == [1, 2]  # counted from 1, as the console
    for line in lines:
        for key in ("loss", "lr", "time_s", "test_regular_mAP", "test_ema_mAP", "selection_mAP",
                    "best_epoch"):
            assert isinstance(line[key], int | float), key
        assert line["selection_mAP"] == max(line["test_regular_mAP"], line["test_ema_mAP"])
        assert line["test_partial"] is False
    assert lines[-1]["best_selection_mAP"] == max(line["selection_mAP"] for line in lines)
    # best_epoch: the 1-based epoch of the highest selection mAP so far (the first one on a tie).
    best_so_far = [1 + int(np.argmax([line["selection_mAP"] for line in lines[:n]])) for n in (1, 2)]
    assert [line["best_epoch"] for line in lines] == best_so_far
    assert stage1_run["summary"]["best_epoch"] == best_so_far[-1]
    printed = re.findall(r"best epoch so far: (\d+)", stage1_run["stdout"])
    assert [int(epoch) for epoch in printed] == best_so_far
    assert f"at epoch {best_so_far[-1]} " in stage1_run["stdout"]  # the final summary line
    events = EventAccumulator(os.path.join(dest, "tensorboard"))
    events.Reload()
    steps = [(event.step, event.value) for event in events.Scalars("epoch/selection_mAP")]
    assert steps == [(line["epoch"], pytest.approx(line["selection_mAP"])) for line in lines]  # 1, 2
    # Without --val_split every summary line names the paper's selection protocol.
    summaries = [line for line in stage1_run["stdout"].splitlines()
                 if "best epoch so far" in line or "done." in line]
    assert len(summaries) == 3 and all(PAPER_PROTOCOL in line for line in summaries)
    epoch_lines = [line for line in stage1_run["stdout"].splitlines() if line.startswith("epoch ")]
    assert re.fullmatch(r"epoch 1/2: loss [\d.]+, [\d.]+s per epoch, about \d+ s left", epoch_lines[0])
    assert epoch_lines[1].endswith("per epoch")  # the last epoch: nothing left
    assert not [name for name in os.listdir(dest) if ".tmp" in name]


def test_best_checkpoint_reproduces_the_reported_map(stage1_run, embedded_data_dir):
    """best.pth loads with src.models.load_model and re-evaluates to the mAP logged for its epoch."""
    from src.data import build_datasets
    from src.engine import build_eval_loader, evaluate
    from src.models import load_model

    checkpoint = torch.load(stage1_run["best"], map_location="cpu", weights_only=True)
    for key in ("model", "ema", "optimizer", "scheduler", "scaler", "epoch", "rng_state", "args",
                "class_names", "model_name", "num_classes", "do_bottleneck_head"):
        assert key in checkpoint, key
    model, class_names = load_model(stage1_run["best"])
    args = train.parse_args(tiny_train_argv(embedded_data_dir, "unused"))
    _, val_set = build_datasets(args)
    assert class_names == list(val_set.class_names)
    result = evaluate(model, build_eval_loader(val_set, 16, 0), "cpu")
    assert checkpoint["epoch"] == stage1_run["summary"]["best_epoch"]  # both counted from 1
    logged = _metrics_lines(stage1_run["path_dest"])[checkpoint["epoch"] - 1]
    assert result["mAP"] == pytest.approx(logged[f"test_{checkpoint['selected_variant']}_mAP"], abs=1e-9)
    assert stage1_run["summary"]["best_test_mAP"] == pytest.approx(result["mAP"], abs=1e-9)


def test_stage1_prior_is_the_clean_pass_of_the_best_model(stage1_run, embedded_data_dir):
    """The CSV equals an independent mean of sigmoid outputs over the un-augmented training images."""
    from src.data import build_datasets
    from src.data.transforms import build_val_transform
    from src.models import load_model

    frame = pd.read_csv(stage1_run["prior"])
    assert list(frame.columns) == ["Classes", "avg_pred"] and len(frame) == EMBEDDED_NUM_CLASSES
    model, _ = load_model(stage1_run["best"])
    args = train.parse_args(tiny_train_argv(embedded_data_dir, "unused"))
    train_set, _ = build_datasets(args)
    view = copy.copy(train_set)
    view.transform = build_val_transform(32)
    with torch.no_grad():
        images = torch.stack([view[i][0] for i in range(len(view))])
        expected = torch.sigmoid(model(images)).mean(dim=0).numpy()
    assert list(frame["Classes"]) == list(train_set.class_names)
    np.testing.assert_allclose(frame["avg_pred"].to_numpy(), expected, rtol=0, atol=1e-6)


def test_stage2_selective_with_prior_and_held_out_selection(stage1_run, embedded_data_dir, tmp_path, capsys):
    dest = tmp_path / "stage2"
    summary = train.main(tiny_train_argv(
        embedded_data_dir, dest, "--partial_loss_mode", "selective", "--prior_path", stage1_run["prior"],
        "--val_split", "0.25", "--epochs", "3", "--stop_epoch", "1", "--ema_decay", "0.9", "--channels_last"))
    out = capsys.readouterr().out
    assert "held-out 25% of the training set" in summary["selection_protocol"]
    assert "partial mAP" in out and "AP over annotated labels only" in out  # the selection split is partial
    assert "paper protocol" not in out
    lines = _metrics_lines(dest)
    assert len(lines) == 1 and lines[0]["select_partial"] is True and lines[0]["test_partial"] is False
    assert lines[0]["selection_split"] == "select"
    assert lines[0]["selection_mAP"] == max(lines[0]["select_regular_mAP"], lines[0]["select_ema_mAP"])
    assert summary["best_test_mAP"] == lines[0][f"test_{lines[0]['selection_variant']}_mAP"]
    with open(dest / "args.json", encoding="utf-8") as handle:
        config = json.load(handle)
    assert config["num_train_images"] == 72 and config["num_selection_images"] == 24
    # --stop_epoch 1 of --epochs 3: the OneCycle schedule spans 3 x 5 steps, we stopped after 5.
    checkpoint = torch.load(dest / "last.pth", map_location="cpu", weights_only=True)
    assert checkpoint["scheduler"]["total_steps"] == 15 and checkpoint["scheduler"]["last_epoch"] == 5
    assert not os.path.exists(dest / "priors")  # stage 2 estimates no prior (auto = only in ignore mode)


@pytest.mark.parametrize("total_steps", [1, 3, 4, 5, 6])
def test_one_cycle_guard_rejects_only_the_step_count_torch_cannot_schedule(total_steps):
    from src.models import create_model

    model = create_model(model_name="test_resnet", num_classes=3)
    args = train.parse_args(["--epochs", "1", "--lr", "1e-3"])
    # Independent expectation: what torch's OneCycleLR itself does on its first step.
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    try:
        torch.optim.lr_scheduler.OneCycleLR(probe, max_lr=1e-3, total_steps=total_steps, pct_start=0.2)
        torch_schedules = True
    except ZeroDivisionError:
        torch_schedules = False
    if torch_schedules:
        _, scheduler, _ = train.build_optimization(model, args, total_steps, None, torch.device("cpu"))
        assert scheduler.total_steps == total_steps
    else:
        with pytest.raises(train.ConfigError, match="--epochs 1 x 5 batches"):
            train.build_optimization(model, args, total_steps, None, torch.device("cpu"))
    assert torch_schedules == (total_steps != 5)


def test_jpeg_draft_flag_reaches_every_eval_view(stage1_run, embedded_data_dir, monkeypatch):
    """--no-jpeg_draft also holds for the held-out selection split and the clean-pass prior (not only for
    the evaluation set), and the flag keeps its name and default (shared with validate.py / src.prior)."""
    import src.callbacks
    from src.utils.distributed import DistributedContext

    ctx = DistributedContext(device=torch.device("cpu"))
    assert train.parse_args([]).jpeg_draft is True
    for flags, expected in (([], (32, 32)), (["--no-jpeg_draft"], None), (["--no-jpeg-draft"], None)):
        args = train.parse_args(tiny_train_argv(embedded_data_dir, stage1_run["path_dest"], "--val_split",
                                                "0.25", "--epochs", "2", *flags))
        assert args.jpeg_draft is (expected is not None)
        trainer = train.build_trainer(args, ctx)
        data = trainer.data
        assert data.evaluation.transform.draft_size == expected
        assert data.selection.transform.draft_size == expected
        seen = []

        def record(net, view, *args, seen=seen, **kwargs):
            seen.append(view.transform.draft_size)

        monkeypatch.setattr(src.callbacks, "compute_prior_from_model", record)
        src.callbacks.PriorWriter.clean_pass_prior(trainer)
        assert seen == [expected]


def test_record_ignored_writes_what_the_top_k_ignored_in_the_last_epoch_only(embedded_data_dir, tmp_path):
    """--record_ignored: every entry CSL's likelihood top-k ignored in the last of 2 epochs - k = 5 x 16
    un-annotated entries per batch of 16, 6 batches - with image ids of the training set."""
    from src.data import build_datasets

    argv = tiny_train_argv(embedded_data_dir, tmp_path / "run", "--partial_loss_mode", "selective",
                           "--epochs", "2", "--record_ignored")
    train.main(argv)
    recorded = np.load(tmp_path / "run" / "ignored_last_epoch.npz")
    train_set, _ = build_datasets(train.parse_args(argv))
    partial = train_set.labels.to_dense()
    assert len(recorded["classes"]) == 5 * 16 * 6  # one epoch's worth, not two
    assert list(recorded["class_names"]) == list(train_set.class_names)
    rows = [list(train_set.image_ids).index(image_id) for image_id in recorded["image_ids"].tolist()]
    assert (partial[rows, recorded["classes"]] == -1).all()  # only un-annotated entries are ignored
