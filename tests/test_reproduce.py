"""reproduce.py and src/reproduce/: the threshold rule, the cells' train.py commands, the table arithmetic,
atomic outputs, the exits, and one tiny end-to-end table with resume."""

from __future__ import annotations

import glob
import json
import os
import shlex

import numpy as np
import pytest

import reproduce
from src.args import build_train_parser
from src.data.embedded import main as embedded_main
from src.data.partial_labels import read_partial_label_file
from src.loss_functions import PEER_MODES
from src.prior import read_prior_csv
from src.reproduce import protocols, report, runner
from src.reproduce.protocols import ROWS, share_threshold
from tests.conftest import TINY_MODEL, run_in_this_process
from tests.test_data_csv import COLOURS, hand_made_dataset


def _embedded(tmp_path, *flags):
    args = reproduce.parse_args(["--data_root", str(tmp_path / "data"), "--models_dir",
                                 str(tmp_path / "models"), "--out", str(tmp_path / "out"), *flags])
    return args, reproduce.build_protocol(args)


def _coco(tmp_path, *flags):
    args = reproduce.parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
    return args, reproduce.build_protocol(args)


def _write_prior(path, values):
    with open(path, "w") as handle:
        handle.write("Classes,avg_pred\n" + "".join(f"c{i},{v}\n" for i, v in enumerate(values)))
    return str(path)


def _row(key):
    return next(row for row in ROWS if row.key == key)


def _train_args(command):
    """The namespace train.py builds from a cell's command (fails if a flag is not train.py's)."""
    return build_train_parser().parse_args(command[command.index(runner.TRAIN_SCRIPT) + 1:])


def _fake_training(monkeypatch, prior_path):
    """run_logged records the commands instead of running them; every run 'writes' ``prior_path``."""
    started = []
    monkeypatch.setattr(runner, "run_logged", lambda command, log, env: started.append(command))
    monkeypatch.setattr(runner, "summarise_run", lambda path: {"best_mAP": 1.0, "final_mAP": 1.0})
    monkeypatch.setattr(runner, "find_prior", lambda path: prior_path)
    monkeypatch.setattr(runner, "cell_composition", lambda *a: {})  # no ignored_last_epoch.npz
    return started


# ----------------------------------------------------------------------------------- the threshold rule
def test_share_threshold_ignores_the_papers_share_of_classes():
    prior = np.array([0.10, 0.54, 0.24, 0.05])
    # 4 classes x 1/80 rounds to 0 -> at least one class: midpoint between the top two values.
    assert share_threshold(prior) == pytest.approx((0.54 + 0.24) / 2)
    # 160 classes x 1/80 = 2 classes above the threshold.
    prior = np.linspace(0.01, 0.9, 160)
    threshold = share_threshold(prior)
    assert (prior > threshold).sum() == 2


def test_share_rule_ignores_what_the_readme_threshold_ignores_on_the_papers_coco_prior(tmp_path):
    # The rule's premise: on the paper's FPC(1000) prior (its top entries: person 0.54, then chair 0.24,
    # ...; the other 76 classes lower) the README threshold 0.5 ignores exactly one class of 80. The share
    # rule, applied to that prior, must ignore the same classes, and the COCO protocol uses 0.5 itself.
    prior = np.concatenate([[0.542279, 0.24080579, 0.22271717, 0.222363], np.linspace(0.2, 0.001, 76)])
    assert np.flatnonzero(prior > share_threshold(prior)).tolist() == [0]
    assert np.flatnonzero(prior > 0.5).tolist() == [0]
    _, coco = _coco(tmp_path)
    csl = next(row for row in ROWS if row.key == "csl")
    assert protocols.resolve_threshold(coco, csl, "unused.csv") == 0.5


def test_embedded_fpc_n_is_cocos_share_of_the_training_set(tmp_path):
    # COCO 2014: 1,000 annotations per class out of 82,081 training images; the embedded protocol keeps
    # that fraction of its own training set (at least 1).
    for n_train, expected in ((6000, 73), (320, 4), (50, 1)):
        _, embedded = _embedded(tmp_path, "--n_train", str(n_train))
        assert embedded.columns == {"fpc": expected, "rps": 0.5}
        assert expected == max(1, round(1000 / 82081 * n_train))
    _, coco = _coco(tmp_path)
    header = report.markdown_table([], coco).splitlines()[0]
    assert "FPC(1000) best" in header and "RPS(0.5) best" in header


def test_mean_std_uses_the_sample_standard_deviation():
    mean, std = report.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(np.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert report.mean_std([3.0]) == (3.0, 0.0)


# ----------------------------------------------------------------------------------- the cells' commands
def test_flags_to_argv():
    assert runner.flags_to_argv({"a": 1, "b": True, "c": False, "d": None}) == ["--a", "1", "--b"]


def test_row_flags_become_the_papers_train_py_arguments(tmp_path, monkeypatch):
    """Each row's cell is a train.py command whose parsed arguments are the paper's README settings."""
    args, protocol = _embedded(tmp_path)
    # share rule on 48 classes ignores the top class (threshold 0.8); 0.5 ignores two: both CSL rows train.
    prior = _write_prior(tmp_path / "prior.csv", [0.9, 0.7, 0.3] + [0.1] * 45)
    started = _fake_training(monkeypatch, prior)
    for seed, scheme in ((0, "fpc"), (1, "rps")):
        runner.run_group(args, protocol, runner.Group(seed, scheme, protocol.columns[scheme]), {})
    simulations = [c for c in started if runner.TRAIN_SCRIPT not in c]
    assert [c[c.index("--simulate_partial_type") + 1:c.index("--seed") + 2] for c in simulations] == [
        ["fpc", "--simulate_partial_param", "244", "--seed", "0"],  # round(1000 / 82081 x 20,000)
        ["rps", "--simulate_partial_param", "0.5", "--seed", "1"]]
    cells = {}
    for command in started:
        if runner.TRAIN_SCRIPT in command:
            parsed = _train_args(command)
            cells[os.path.basename(parsed.path_dest)] = parsed
    table_rows = [row for row in protocols.protocol_rows(protocol) if not row.full_labels]  # one per seed
    assert sorted(cells) == sorted(f"{s}_{row.key}" for s in ("fpc_seed0", "rps_seed1") for row in table_rows)
    assert [row.key for row in table_rows] == [row.key for row in ROWS if row.default and not row.full_labels]
    upstream = protocol.upstream["path"]
    for name, cell in cells.items():
        seed = 0 if name.startswith("fpc") else 1
        assert (cell.model_name, cell.model_path, cell.image_size, cell.num_classes) == (
            "test_resnet.r160_in1k", upstream, 32, 48)
        assert (cell.epochs, cell.batch_size, cell.lr, cell.workers, cell.ema_decay, cell.seed) == (
            6, 64, 8e-3, 0, 0.997, seed)
        assert cell.data == protocol.data and cell.partial_labels.endswith(f"{name[:9]}.npz")
    gammas = {key: (c.partial_loss_mode, c.gamma_pos, c.gamma_neg, c.gamma_unann, c.estimate_prior)
              for key, c in cells.items()}
    assert gammas["fpc_seed0_ignore_ce"] == ("ignore", 0, 0, 0, "clean")
    assert gammas["fpc_seed0_negative_ce"] == ("negative", 0, 0, 0, "clean")
    assert gammas["fpc_seed0_negative_asl"] == ("negative", 1, 4, 4, "none")
    assert gammas["fpc_seed0_csl"] == ("selective", 0, 3, 4, "none")  # the README's FPC column
    assert gammas["rps_seed1_csl"] == ("selective", 0, 1, 4, "none")  # and its RPS column
    for scheme in ("fpc_seed0", "rps_seed1"):
        csl, readme = cells[f"{scheme}_csl"], cells[f"{scheme}_csl_readme_threshold"]
        assert csl.prior_path == readme.prior_path == prior and csl.likelihood_topk == 5
        assert (csl.prior_threshold, readme.prior_threshold) == (pytest.approx(0.8), 0.5)
    # The whole command of one cell, pinned (the order of the flags is part of "the same command").
    csl_command = next(c for c in started if c[-5:-1] == ["--prior_path", prior, "--prior_threshold", "0.8"])
    out = str(tmp_path / "out")
    assert shlex.join(csl_command[1:]) == shlex.join([
        runner.TRAIN_SCRIPT, "--model-name", "test_resnet.r160_in1k", "--image-size", "32", "--epochs", "6",
        "--batch-size", "64", "--lr", "0.008", "--workers", "0", "--device", "auto", "--dataset_type", "coco",
        "--num-classes", "48", "--ema_decay", "0.997", "--cache_images", "--data", protocol.data,
        "--partial_labels", f"{out}/labels/fpc_seed0.npz", "--seed", "0",
        "--path_dest", f"{out}/cells/fpc_seed0_csl", "--partial_loss_mode", "selective",
        "--likelihood_topk", "5", "--gamma_pos", "0", "--gamma_unann", "4", "--gamma_neg", "3",
        "--model-path", upstream, "--estimate_prior", "none", "--record_ignored",
        "--prior_path", prior, "--prior_threshold", "0.8", "--overwrite"])


def test_coco_cells_get_the_users_flags_and_the_protocols_defaults(tmp_path, monkeypatch):
    args, protocol = _coco(tmp_path, "--lr", "1e-4", "-j", "3", "--metadata", str(tmp_path / "meta"))
    prior = _write_prior(tmp_path / "prior.csv", [0.9, 0.3])
    started = _fake_training(monkeypatch, prior)
    runner.run_cell(args, protocol, runner.Group(0, "fpc", 1000), ROWS[0], "labels.npz", None, {})
    cell = _train_args(started[0])
    assert (cell.model_name, cell.model_path, cell.image_size, cell.epochs, cell.batch_size) == (
        "tresnet_m", "none", 448, 30, 64)
    assert (cell.lr, cell.workers, cell.metadata, cell.num_classes, cell.data) == (
        1e-4, 3, str(tmp_path / "meta"), 80, str(tmp_path))


def test_train_flags_are_passed_on_only_when_set(tmp_path, monkeypatch):
    prior = _write_prior(tmp_path / "prior.csv", [0.9, 0.3])
    started = _fake_training(monkeypatch, prior)
    args, plain = _embedded(tmp_path)
    runner.run_cell(args, plain, runner.Group(0, "fpc", 4), ROWS[0], "labels.npz", None, {})
    defaults = build_train_parser().parse_args([])
    default_cell = _train_args(started[-1])
    for name in ("weight_decay", "jpeg_draft", "skip_bad_images", "stop_epoch", "amp", "amp_dtype"):
        assert getattr(default_cell, name) == getattr(defaults, name)
        assert f"--{name}" not in started[-1] and f"--no-{name}" not in started[-1]

    flags = ["--weight_decay", "1e-3", "--no-jpeg_draft", "--skip_bad_images", "--stop_epoch", "3",
             "--amp_dtype", "bfloat16", "--ema_decay", "0.99"]
    args, protocol = _embedded(tmp_path, *flags, "--out", str(tmp_path / "out2"))
    runner.run_cell(args, protocol, runner.Group(0, "fpc", 4), ROWS[0], "labels.npz", None, {})
    cell = _train_args(started[-1])
    assert (cell.weight_decay, cell.jpeg_draft, cell.skip_bad_images, cell.stop_epoch, cell.amp_dtype,
            cell.ema_decay) == (1e-3, False, True, 3, "bfloat16", 0.99)
    # The cached upstream backbone is named after them; its pretraining keeps its own schedule.
    assert protocol.upstream["path"] != plain.upstream["path"]
    monkeypatch.setattr(runner, "ensure_dataset", lambda *a, **k: None)
    with pytest.raises(FileNotFoundError):  # the fake training wrote no last.pth
        runner.prepare_embedded(args, protocol, {})
    upstream = _train_args(started[-1])
    assert (upstream.stop_epoch, upstream.epochs, upstream.num_classes, upstream.weight_decay) == (
        None, 8, 22, 1e-3)  # the default glyphs design: 6 shapes + 8 body + 8 core colours


def test_readme_threshold_row_runs_only_on_the_embedded_protocol(tmp_path):
    _, embedded = _embedded(tmp_path)
    _, coco = _coco(tmp_path)
    assert [r.key for r in protocols.protocol_rows(embedded)][-1] == "csl_readme_threshold"  # default rows
    assert "csl_readme_threshold" not in [r.key for r in protocols.protocol_rows(coco)]
    assert coco.prior_threshold == "0.5" and embedded.prior_threshold == "share"
    row = _row("csl_readme_threshold")
    assert protocols.resolve_threshold(embedded, row, "unused.csv") == 0.5  # no prior file needed


def test_rows_selection_brings_the_stage1_row_and_rejects_unknown_keys(tmp_path):
    _, protocol = _embedded(tmp_path)
    assert protocols.select_rows(protocol, None) is None
    protocol.rows = protocols.select_rows(protocol, "csl")
    assert protocol.rows == ("ignore_ce", "csl")  # CSL needs the Ignore run's prior
    assert [r.key for r in protocols.protocol_rows(protocol)] == ["ignore_ce", "csl"]
    assert protocols.select_rows(protocol, "negative_ce,negative_asl") == ("negative_ce", "negative_asl")
    with pytest.raises(ValueError, match="--rows"):
        protocols.select_rows(protocol, "csl,bogus")
    _, coco = _coco(tmp_path)
    with pytest.raises(ValueError, match="csl_readme_threshold"):  # embedded-only row
        protocols.select_rows(coco, "csl_readme_threshold")


def test_ignored_classes_compare_like_the_loss(tmp_path):
    prior = _write_prior(tmp_path / "prior.csv", [0.53, 0.43, 0.5, 0.2])
    assert runner.ignored_classes(prior, 0.5) == [0]  # strictly above; 0.5 itself is kept
    assert runner.ignored_classes(prior, 0.48) == [0, 2]
    assert runner.ignored_classes(prior, 0.0) == []  # threshold 0 disables the prior in the loss


def test_readme_row_reuses_the_csl_run_only_when_it_ignores_the_same_classes(tmp_path, monkeypatch):
    args, protocol = _embedded(tmp_path)
    group = runner.Group(0, "fpc", 73)
    row = _row("csl_readme_threshold")
    twin = {"row": "csl", "prior_threshold": 0.48, "best_mAP": 50.0, "final_mAP": 49.0, "seed": 0}
    started = []
    monkeypatch.setattr(runner, "run_logged", lambda command, log, env: started.append(command))
    monkeypatch.setattr(runner, "summarise_run", lambda path: {"best_mAP": 1.0, "final_mAP": 1.0})
    monkeypatch.setattr(runner, "cell_composition", lambda *a: {})

    same = _write_prior(tmp_path / "same.csv", [0.53, 0.43, 0.2])  # 0.48 and 0.5 both ignore class 0
    result = runner.run_cell(args, protocol, group, row, "labels.npz", same, {}, twin)
    assert started == [] and result["same_run_as"] == "csl" and result["best_mAP"] == 50.0
    assert result["row"] == row.key and result["prior_threshold"] == 0.5 and result["ignored_classes"] == [0]

    group = runner.Group(1, "fpc", 73)
    other = _write_prior(tmp_path / "other.csv", [0.53, 0.49, 0.2])  # 0.48 also ignores class 1
    result = runner.run_cell(args, protocol, group, row, "labels.npz", other, {}, twin)
    assert len(started) == 1 and "same_run_as" not in result and result["best_mAP"] == 1.0


# ----------------------------------------------------------------------------------- outputs and exits
def _failing_replace(monkeypatch, name):
    """os.replace fails (EIO) for targets called ``name``: the last step of an atomic write."""
    real = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == name:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_protocol_json_is_written_atomically(tmp_path, monkeypatch, capsys):
    args, _ = _embedded(tmp_path)
    os.makedirs(args.out)
    old = os.path.join(args.out, "protocol.json")
    with open(old, "w") as handle:
        handle.write('{"old": true}\n')
    _failing_replace(monkeypatch, "protocol.json")
    argv = ["--data_root", str(tmp_path / "data"), "--out", args.out, "--seeds", "1"]
    assert reproduce.cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("reproduce.py: error: ") and f"cannot write {old!r}" in err
    assert json.load(open(old)) == {"old": True}  # the previous file is intact
    assert glob.glob(old + ".tmp*") == []


def test_result_json_is_written_atomically(tmp_path, monkeypatch):
    args, protocol = _embedded(tmp_path)
    _fake_training(monkeypatch, None)
    group, row = runner.Group(0, "fpc", 73), _row("negative_asl")
    result_path = os.path.join(args.out, "cells", "fpc_seed0_negative_asl", "result.json")
    _failing_replace(monkeypatch, "result.json")
    with pytest.raises(OSError, match="result.json"):
        runner.run_cell(args, protocol, group, row, "labels.npz", None, {})
    # No partial result.json: the cell does not look finished and runs again on the next call.
    assert not os.path.exists(result_path) and glob.glob(result_path + ".tmp*") == []
    monkeypatch.undo()
    started = _fake_training(monkeypatch, None)
    assert runner.run_cell(args, protocol, group, row, "labels.npz", None, {})["best_mAP"] == 1.0
    assert len(started) == 1 and json.load(open(result_path))["row"] == "negative_asl"


def test_a_failed_cell_exits_1_with_its_log_and_the_resume_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(runner, "prepare_embedded", lambda *a: None)  # no data: the simulation fails
    out = tmp_path / "out"
    argv = ["--data_root", str(tmp_path / "missing"), "--out", str(out), "--seeds", "1", "--schemes", "fpc",
            "--jobs", "1", "--device", "cpu", "--rows", "ignore_ce"]  # the simulation is the first step
    assert reproduce.cli(argv) == 1
    err = capsys.readouterr().err
    log = out / "labels" / "fpc_seed0.npz.log"
    assert err.startswith(f"reproduce.py: error: command failed (exit 2); log: {log}\n")
    assert "COCO train annotations not found" in err  # the tail of the failed command's log
    assert err.rstrip().endswith("Re-run the same command to resume after fixing it.")
    assert (out / "protocol.json").exists() and not (out / "labels" / "fpc_seed0.npz").exists()


def test_user_errors_exit_2_before_any_work(tmp_path, capsys):
    base = ["--data_root", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    assert reproduce.cli([*base, "--rows", "csl,bogus"]) == 2
    assert "reproduce.py: error: --rows: unknown or empty ['bogus']" in capsys.readouterr().err
    assert reproduce.cli([*base, "--schemes", "fpc,xyz"]) == 2
    assert "reproduce.py: error: --schemes: unknown ['xyz']" in capsys.readouterr().err
    assert reproduce.cli([*base, "--dataset_type", "lvis"]) == 2
    assert "reproduce.py: error: --dataset_type lvis" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse: a threshold is a number or 'share'
        reproduce.cli([*base, "--prior_threshold", "half"])
    assert exit_info.value.code == 2 and "must be a number or 'share'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_table_end_to_end_and_skip_on_rerun(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "run_logged", run_in_this_process)
    out = tmp_path / "out"
    argv = ["--data_root", str(tmp_path / "data"), "--models_dir", str(tmp_path / "models"),
            "--out", str(out), "--n_train", "192", "--n_test", "64", "--seeds", "1", "--schemes", "fpc",
            "--epochs", "2", "--rows", "full_labels,ignore_ce,negative_ce,csl",  # the pipeline's stages
            "--batch-size", "32", "--upstream_epochs", "1", "--jobs", "1", "--device", "cpu"]
    assert reproduce.cli(argv) == 0

    table = json.loads((out / "results.json").read_text())
    rows = {row["row"]: row for row in table["table"]}
    assert set(rows) == {"full_labels", "ignore_ce", "negative_ce", "csl"}
    n_fpc = round(1000 / 82081 * 192)  # COCO's share of the training set
    assert table["protocol"]["columns"] == {"fpc": n_fpc}
    for row in rows.values():
        assert 0.0 < row["best_mAP"] <= 100.0 and row["best_mAP"] >= row["final_mAP"] - 1e-9
        assert row["seeds"] == 1 and (row["paper_mAP"] is not None) == (row["row"] != "full_labels")
        assert row["share"] == pytest.approx(row["best_mAP"] / rows["full_labels"]["best_mAP"])
    assert table["regime"]["fpc"] == {"ceiling": rows["full_labels"]["best_mAP"],
                                      "ignore_ce": rows["ignore_ce"]["share"],
                                      "negative_ce": rows["negative_ce"]["share"]}
    cells = {cell["row"]: cell for cell in table["cells"]}
    full_command = (out / "cells" / "full_seed0_full_labels" / "command.txt").read_text()
    assert "--partial_labels" not in full_command and "--simulate_partial_type" not in full_command
    # The mechanism: CSL's last epoch ignored likelihood_topk (5) x batch (32) entries per full batch.
    ignored = cells["csl"]["ignored"]
    assert ignored["entries"] == 5 * 32 * (192 // 32)
    assert sum(ignored[k] for k in ("true_positive", "other")) <= ignored["entries"]
    # CSL used the Ignore run's prior with the share rule's threshold, and its command line is stored.
    csl_command = (out / "cells" / "fpc_seed0_csl" / "command.txt").read_text()
    assert cells["ignore_ce"]["prior_path"] in csl_command and "--partial_loss_mode selective" in csl_command
    prior = read_prior_csv(cells["ignore_ce"]["prior_path"]).numpy()
    assert cells["csl"]["prior_threshold"] == pytest.approx(share_threshold(prior), rel=1e-5)
    for name in ("results.csv", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    assert glob.glob(str(out / "*.tmp*")) == []
    report_text = (out / "results.md").read_text()
    assert "Spearman" in report_text and "CSL, Selective P-ASL" in report_text
    assert "Regime (FPC): ceiling" in report_text and "What the likelihood top-k ignored" in report_text
    assert json.loads((out / "protocol.json").read_text())["protocol"]["columns"] == {"fpc": n_fpc}

    # Re-running finds every cell finished: no training command is started again.
    started = []
    original = runner.run_logged

    def recording_run(command, log, env):
        started.append(command)
        return original(command, log, env)

    monkeypatch.setattr(runner, "run_logged", recording_run)
    mtime = os.path.getmtime(out / "cells" / "fpc_seed0_csl" / "result.json")
    reproduce.main(argv)
    assert started == []
    assert os.path.getmtime(out / "cells" / "fpc_seed0_csl" / "result.json") == mtime
    assert json.loads((out / "results.json").read_text())["table"] == table["table"]

    # The same --out with another --epochs: the finished 2-epoch cells are refused, not reported.
    changed = [*argv[:argv.index("--epochs") + 1], "3", *argv[argv.index("--epochs") + 2:]]
    capsys.readouterr()
    assert reproduce.cli(changed) == 2 and started == []
    assert "--epochs 2 -> 3" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["table"] == table["table"]


# ----------------------------------------------------------------------------------- issue 11 additions
def test_rows_groups_and_opt_in_rows(tmp_path):
    _, protocol = _embedded(tmp_path)
    default_keys = [row.key for row in protocols.protocol_rows(protocol)]
    assert default_keys[0] == "full_labels" and "csl_topk1" not in default_keys
    assert protocols.select_rows(protocol, "regime") == ("full_labels", "ignore_ce", "negative_ce")
    assert protocols.select_rows(protocol, "mechanism") == (
        "ignore_ce", "negative_ce", "csl", "csl_prior_only", "csl_likelihood_only", "csl_topk1", "csl_topk2",
        "negative_focal")
    assert protocols.select_rows(protocol, "full_labels") == ("full_labels",)  # needs no prior


def test_ablation_rows_set_only_the_component_they_name(tmp_path, monkeypatch):
    args, protocol = _embedded(tmp_path, "--rows", "mechanism")
    protocol.rows = protocols.select_rows(protocol, args.rows)
    prior = _write_prior(tmp_path / "prior.csv", [0.9] + [0.1] * 47)
    started = _fake_training(monkeypatch, prior)
    runner.run_group(args, protocol, runner.Group(0, "fpc", 73), {})
    cells = {os.path.basename(p.path_dest): p for p in (_train_args(c) for c in started
                                                         if runner.TRAIN_SCRIPT in c)}
    prior_only, likelihood_only = cells["fpc_seed0_csl_prior_only"], cells["fpc_seed0_csl_likelihood_only"]
    assert (prior_only.likelihood_topk, prior_only.prior_path) == (0, prior)
    assert (likelihood_only.likelihood_topk, likelihood_only.prior_path) == (5, None)
    assert [cells[f"fpc_seed0_csl_topk{k}"].likelihood_topk for k in (1, 2)] == [1, 2]
    for name in ("csl", "csl_prior_only", "csl_topk1"):  # everything else as in the CSL row
        assert (cells[f"fpc_seed0_{name}"].gamma_neg, cells[f"fpc_seed0_{name}"].gamma_unann) == (3, 4)


def test_regime_and_share_from_the_table():
    results = [{"row": "full_labels", "scheme": "full", "best_mAP": 80.0, "final_mAP": 79.0},
               {"row": "full_labels", "scheme": "full", "best_mAP": 82.0, "final_mAP": 80.0},
               {"row": "ignore_ce", "scheme": "fpc", "best_mAP": 40.5, "final_mAP": 40.0},
               {"row": "negative_ce", "scheme": "fpc", "best_mAP": 72.9, "final_mAP": 70.0}]
    protocol = protocols.Protocol("embedded", "d", {"fpc": 73}, {}, "share",
                                  rows=("full_labels", "ignore_ce", "negative_ce"))
    rows = report.table_rows(results, protocol)
    numbers = report.regime(rows, "fpc")
    assert numbers == pytest.approx({"ceiling": 81.0, "ignore_ce": 0.5, "negative_ce": 0.9})
    text = report.describe_regime(numbers)
    assert "ceiling 81.0, Ignore/ceiling 0.50, Negative/ceiling 0.90 - COCO" in text


def test_ignored_composition_by_hand():
    from src.reproduce.mechanism import composition_table, ignored_composition

    attributes = [("circle", "red"), ("circle", "blue"), ("square", "red"), ("square", "blue"),
                  ("plus", "green")]  # (shape, colour) of each class
    full = np.array([[1, 0, 0, 0, 0],     # image 10: a red circle
                     [0, 0, 0, 1, 1]])    # image 11: a blue square and a green plus
    image_ids = [10, 10, 10, 11, 11, 11]
    classes = [0,    # positive
               1,    # blue circle in image 10: shares the circle's shape
               2,    # red square in image 10: shares the colour
               1,    # blue circle in image 11: shares the blue square's colour
               2,    # red square in image 11: shares the square's shape
               4]    # green plus in image 11: positive
    got = ignored_composition(image_ids, classes, full, [10, 11], attributes)
    assert {k: got[k] for k in ("entries", "true_positive", "shares_colour", "shares_shape", "other")} == \
        {"entries": 6, "true_positive": 2, "shares_colour": 2, "shares_shape": 2, "other": 0}
    got = ignored_composition([10], [4], full, [10, 11], attributes)
    assert (got["other"], got["other_share"]) == (1, 1.0)
    with pytest.raises(ValueError, match="not in the full labels"):
        ignored_composition([12], [0], full, [10, 11], attributes)
    # The table averages the seeds; a row whose top-k ignores nothing (prior only) shows '-', not nan%.
    def cell(row, ids, found):
        ignored = ignored_composition(ids, found, full, [10, 11], attributes)
        return {"row": row, "scheme": "fpc", "ignored": ignored}

    seeds = [cell("csl", image_ids, classes), cell("csl", [10], [4]), cell("csl_prior_only", [], [])]
    lines = composition_table(seeds, ["fpc"]).splitlines()
    # csl: entries (6 + 1) / 2; prior 0%; true positives (2/6 + 0) / 2 = 16.7%; colour 16.7%; core 0% (no
    # cores: solid objects); shape 16.7%; other 50.0%
    assert lines[2] == "| csl | fpc | 2 | 4 | 0.0% | 16.7% | 16.7% | 0.0% | 16.7% | 50.0% |"
    assert lines[3] == "| csl_prior_only | fpc | 1 | 0 | - | - | - | - | - | - |"


def test_ignored_composition_counts_prior_classes_and_core_colours_apart():
    from src.reproduce.mechanism import ignored_composition

    attributes = [("circle", "red", "blue"), ("square", "green", "yellow"), ("plus", "blue", "white"),
                  ("ring", "white", "black"), ("ring", "black", "red")]  # (shape, body, core)
    full = np.array([[1, 0, 0, 0, 0]])  # image 20: a red circle with a blue core
    got = ignored_composition([20, 20, 20, 20], [0, 1, 2, 4], full, [20], attributes, prior_ignored=[0])
    # class 0: the prior ignores it already (a true positive, but not counted as one); 1: nothing shared;
    # 2: its body is the circle's core colour; 4: its core is the circle's body colour
    assert {k: got[k] for k in ("prior_ignored", "true_positive", "shares_colour", "shares_core_colour",
                                "shares_shape", "other")} == {
        "prior_ignored": 1, "true_positive": 0, "shares_colour": 0, "shares_core_colour": 2,
        "shares_shape": 0, "other": 1}
    assert ignored_composition([20], [0], full, [20], attributes)["true_positive"] == 1  # no prior: counted


# ----------------------------------------------------------------------------------- the sweep
def test_sweep_configuration_covers_the_regime_variables(tmp_path):
    from src.reproduce.sweep import SWEEP_POINTS, SWEEP_ROWS, point_protocol

    strengths = {(p.n_train, p.epochs) for p in SWEEP_POINTS if p.axis == "strength"}
    assert len(strengths) >= 4
    assert len({p.fpc_scale for p in SWEEP_POINTS}) >= 2 and len({p.design for p in SWEEP_POINTS}) >= 2
    args, _ = _embedded(tmp_path, "--sweep")
    seen_data = {}
    for point in SWEEP_POINTS:
        point_args, protocol = point_protocol(args, point, {})
        assert protocol.rows == SWEEP_ROWS and protocol.design == point.design
        assert protocol.columns["fpc"] == max(1, round(1000 / 82081 * point.n_train * point.fpc_scale))
        assert protocol.train_flags["epochs"] == point.epochs
        key = (point.design, point.n_train, point.n_test)
        assert seen_data.setdefault(protocol.data, key) == key  # one data folder per generated dataset
        assert point_args.out.endswith(os.path.join("sweep", point.name))
    assert args.seeds == 1


def test_sweep_summary_and_report(tmp_path, monkeypatch):
    from src.reproduce.sweep import SweepPoint, run_sweep

    args, _ = _embedded(tmp_path, "--sweep")
    scores = {"full_labels": 80.0, "ignore_ce": 60.0, "negative_ce": 70.0, "negative_asl": 72.0, "csl": 71.0}
    monkeypatch.setattr(runner, "prepare_embedded", lambda *a: None)
    monkeypatch.setattr(runner, "run_logged", lambda command, log, env: None)
    monkeypatch.setattr(runner, "summarise_run", lambda path: {
        "best_mAP": scores[os.path.basename(path).split("_", 2)[-1]], "final_mAP": 1.0})
    prior = _write_prior(tmp_path / "p.csv", [0.5] + [0.1] * 47)
    monkeypatch.setattr(runner, "find_prior", lambda path: prior)
    monkeypatch.setattr(runner, "cell_composition", lambda *a: {})
    monkeypatch.setattr(report, "prior_tables", lambda *a: "")
    points = (SweepPoint("a", "strength", 600, 2), SweepPoint("b", "design", 600, 2, design="glyphs"))
    text = run_sweep(args, {}, 1, 1, {}, points=points)
    lines = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [(line["name"], line["scheme"]) for line in lines] == [("a", "fpc"), ("a", "rps"), ("b", "fpc"),
                                                                  ("b", "rps")]
    for line in lines:  # best baseline Negative-ASL 72, CSL 71: margin -1; regime 80, 0.75, 0.875
        assert (line["best_baseline"], line["csl_margin"]) == ("negative_asl", pytest.approx(-1.0))
        assert (line["ceiling"], line["ignore_ce"], line["negative_ce"]) == (80.0, 0.75, 0.875)
    assert "| a | strength | 600 x 2 | shape_colour | FPC(7) | 80.0 | 0.75 | 0.88 | negative_asl 72.00 |" \
        in text
    assert (tmp_path / "out" / "sweep.png").stat().st_size > 0


def test_peer_rows_run_each_later_method_with_the_protocols_settings(tmp_path, monkeypatch):
    args, protocol = _embedded(tmp_path, "--rows", "peers")
    protocol.rows = protocols.select_rows(protocol, args.rows)
    default_keys = [row.key for row in ROWS if row.default]
    assert list(protocol.rows) == [*default_keys, *PEER_MODES, "ll_r_boostlu"]  # next to the paper's rows
    started = _fake_training(monkeypatch, _write_prior(tmp_path / "p.csv", [0.9] + [0.1] * 47))
    full = np.eye(4, 48, dtype=np.int8)  # one positive per image
    names = [str(i) for i in range(48)]
    monkeypatch.setattr(runner, "training_labels", lambda protocol, data=None: (full, [1, 2, 3, 4], names))
    runner.run_group(args, protocol, runner.Group(0, "rps", 0.5), {})
    parsed = [_train_args(c) for c in started if runner.TRAIN_SCRIPT in c]
    peers = {p.partial_loss_mode: p for p in parsed
             if p.partial_loss_mode in PEER_MODES and not p.boostlu_alpha}
    assert sorted(peers) == sorted(PEER_MODES)
    boosted = [(p.partial_loss_mode, p.boostlu_alpha) for p in parsed if p.boostlu_alpha is not None]
    assert boosted == [("ll_r", 5.0)]  # BoostLU: LL-R with their alpha 5, the only boosted cell
    peers["ll_r_boostlu"] = next(p for p in parsed if p.boostlu_alpha is not None)
    for mode, cell in peers.items():  # one learning rate and schedule for every method, defaults otherwise
        assert (cell.lr, cell.epochs, cell.batch_size, cell.loss_reduction) == (8e-3, 6, 64, "sum"), mode
        assert cell.prior_path is None and cell.estimate_prior == "none"
    assert peers["epr"].epr_expected_positives == 1.0  # the full labels' mean, given to EPR


def test_progress_line_counts_cells_and_estimates_the_time_left(monkeypatch, capsys):
    clock = iter([100.0, 160.0, 160.0, 220.0])  # start, then one reading per finished cell
    monkeypatch.setattr(runner.time, "time", lambda: next(clock))
    progress = runner.Progress(total=4)
    assert progress.cell_finished(trained=False) == "[progress] 1/4 cells, 60 s elapsed"  # skipped: no pace
    assert progress.cell_finished(trained=True) == "[progress] 2/4 cells, 60 s elapsed, about 2 min left"
    assert progress.cell_finished(trained=True) == "[progress] 3/4 cells, 2 min elapsed, about 60 s left"
    assert capsys.readouterr().out.count("[progress]") == 3


@pytest.mark.parametrize("design, upstream_classes", [("shape_colour", 14), ("glyphs", 22)])
def test_upstream_pretraining_gets_the_designs_attribute_classes(tmp_path, monkeypatch, design,
                                                                 upstream_classes):
    args, protocol = _embedded(tmp_path, "--design", design)
    generated = []
    monkeypatch.setattr(runner, "ensure_dataset", lambda out, variant, **kw: generated.append((variant, kw)))
    started = []
    monkeypatch.setattr(runner, "run_logged", lambda command, log, env: started.append(command))
    monkeypatch.setattr(runner.os, "replace", lambda src, dst: None)
    runner.prepare_embedded(args, protocol, {})
    assert [(variant, kw["design"]) for variant, kw in generated] == [("embedded", design),
                                                                      ("upstream", design)]
    assert _train_args(started[0]).num_classes == upstream_classes
    assert (design in protocol.data) == (design != "shape_colour")  # the default keeps its folder names


def test_full_labels_row_alone_needs_no_partial_labels(tmp_path, monkeypatch):
    args, protocol = _embedded(tmp_path, "--rows", "full_labels", "--seeds", "2")
    protocol.rows = protocols.select_rows(protocol, args.rows)
    monkeypatch.setattr(runner, "prepare_embedded", lambda *a: None)
    started = _fake_training(monkeypatch, None)
    results = runner.run_table(args, protocol, 2, 1, {})
    assert [r["row"] for r in results] == ["full_labels", "full_labels"]
    assert all(runner.TRAIN_SCRIPT in c for c in started)  # no coco_simulation command
    assert sorted(_train_args(c).seed for c in started) == [0, 1]
    assert all(_train_args(c).partial_labels is None for c in started)


def test_embedded_report_prints_each_rows_full_scale_command_and_train_py_accepts_it(tmp_path):
    args, protocol = _embedded(tmp_path, "--rows", "peers")
    protocol.rows = protocols.select_rows(protocol, args.rows)
    text = report.full_scale_commands(protocol)
    by_key = {row.key: row for row in ROWS}
    at_full_scale = [key for key in protocol.rows if "coco" in by_key[key].protocols]
    assert "csl_readme_threshold" not in at_full_scale  # the embedded-only row (the same run at full scale)
    assert f"--rows {','.join(at_full_scale)} --seeds 3" in text and "--data /path/to/COCO_2014" in text
    coco = ["--data", "/path/to/COCO_2014", "--model-name", "tresnet_m", "--image-size", "448",
            "--epochs", "30", "--batch-size", "64", "--lr", "2e-4", "--dataset_type", "coco",
            "--num-classes", "80"]
    assert "`--model-name tresnet_m --model-path none --image-size 448 --epochs 30 --batch-size 64 --lr " \
           "0.0002 --workers 8 --device auto --dataset_type coco --num-classes 80`" in text  # COCO_FLAGS
    table = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert len(table) == 1 + 2 * (len(at_full_scale) - 1)  # the ceiling once, every other row per column
    modes = set()
    for label, column, flags in table:
        row = next(r for r in ROWS if r.label == label.lstrip("| "))
        argv = shlex.split(flags.strip(" |`").replace("<the prior CSV in the Ignore run's priors/>", "p.csv"))
        parsed = build_train_parser().parse_args(coco + argv)  # a command train.py accepts
        modes.add(parsed.partial_loss_mode)
        assert parsed.partial_loss_mode == row.flags["partial_loss_mode"]
        if row.key == "csl":  # the paper's README: threshold 0.5, gamma_neg 3 on FPC and 1 on RPS
            assert (parsed.prior_threshold, parsed.gamma_neg) == (0.5, 3 if column == "FPC(1000)" else 1)
        if row.key == "ll_r_boostlu":
            assert parsed.boostlu_alpha == 5.0
    assert set(PEER_MODES) <= modes


# ----------------------------------------------------------------------------------- a cell's identity
def test_a_cell_is_reused_only_with_identical_settings(tmp_path, monkeypatch, capsys):
    """Same settings: the finished cell is reused. --epochs changed: refused with the change named, the old
    result kept; with --overwrite: deleted and trained anew with the new settings."""
    started = _fake_training(monkeypatch, None)
    group, row = runner.Group(0, "fpc", 73), _row("negative_asl")
    labels = tmp_path / "labels.npz"
    labels.write_bytes(b"labels")
    args, protocol = _embedded(tmp_path)
    first = runner.run_cell(args, protocol, group, row, str(labels), None, {})
    assert len(started) == 1
    assert runner.run_cell(args, protocol, group, row, str(labels), None, {}) == first and len(started) == 1

    result_path = os.path.join(args.out, "cells", "fpc_seed0_negative_asl", "result.json")
    changed, changed_protocol = _embedded(tmp_path, "--epochs", "5")
    with pytest.raises(ValueError) as error:
        runner.run_cell(changed, changed_protocol, group, row, str(labels), None, {})
    assert "--epochs 6 -> 5" in str(error.value) and "--overwrite" in str(error.value)
    assert "another --out" in str(error.value) and len(started) == 1
    assert json.load(open(result_path)) == first  # the finished cell is kept as it was

    labels.write_bytes(b"other labels")  # the same flags, another labels file content: not the same cell
    with pytest.raises(ValueError, match="the content of --partial_labels"):
        runner.run_cell(args, protocol, group, row, str(labels), None, {})

    overwrite, overwrite_protocol = _embedded(tmp_path, "--epochs", "5", "--overwrite")
    result = runner.run_cell(overwrite, overwrite_protocol, group, row, str(labels), None, {})
    assert len(started) == 2 and _train_args(started[-1]).epochs == 5
    assert "--overwrite: deleting" in capsys.readouterr().out
    assert result["identity"] != first["identity"] and json.load(open(result_path)) == result
    assert runner.run_cell(overwrite, overwrite_protocol, group, row, str(labels), None, {}) == result
    assert len(started) == 2


def test_a_cell_finished_without_recorded_settings_is_not_reused(tmp_path, monkeypatch):
    """A result.json of an older reproduce.py (no settings.json): its settings are unknown."""
    started = _fake_training(monkeypatch, None)
    args, protocol = _embedded(tmp_path)
    cell_dir = tmp_path / "out" / "cells" / "fpc_seed0_negative_asl"
    cell_dir.mkdir(parents=True)
    (cell_dir / "result.json").write_text(json.dumps({"row": "negative_asl", "best_mAP": 99.0}))
    with pytest.raises(ValueError, match="not recorded"):
        runner.run_cell(args, protocol, runner.Group(0, "fpc", 73), _row("negative_asl"), "l.npz", None, {})
    assert started == []
    args, protocol = _embedded(tmp_path, "--overwrite")
    result = runner.run_cell(args, protocol, runner.Group(0, "fpc", 73), _row("negative_asl"), "l", None, {})
    assert len(started) == 1 and result["best_mAP"] == 1.0


def _changed(value):
    if value is True:
        return False
    try:
        return float(value) + 1
    except (TypeError, ValueError):
        return f"{value}_other"


def test_changing_any_one_flag_of_a_cell_changes_its_identity(tmp_path):
    """A property over every flag of real cells (CSL with its prior, the ceiling); the output folder is
    where the cell is written, not what it is."""
    args, protocol = _embedded(tmp_path, "--rows", "csl,full_labels")
    prior = _write_prior(tmp_path / "prior.csv", [0.9, 0.3] + [0.1] * 46)
    identity, run_settings = runner.settings_identity, runner.run_settings
    for group, row, labels, cell_prior in ((runner.Group(0, "fpc", 73), _row("csl"), "l.npz", prior),
                                           (runner.Group(0, "full", None), _row("full_labels"), None, None)):
        flags = runner.cell_flags(args, protocol, group, row, labels, cell_prior, str(tmp_path / "cell"))
        base = identity(run_settings(flags, 1, protocol.data_config))
        assert len([name for name, value in flags.items() if value is not None]) >= 15
        for name, value in flags.items():
            if value is None or name == "path_dest":
                continue
            settings = run_settings(dict(flags, **{name: _changed(value)}), 1, protocol.data_config)
            assert identity(settings) != base, name
        moved = dict(flags, path_dest=str(tmp_path / "elsewhere"))
        assert identity(run_settings(moved, 1, protocol.data_config)) == base
        assert identity(run_settings(flags, 2, protocol.data_config)) != base  # GPUs per cell
        other_data = dict(protocol.data_config, n_train=protocol.data_config["n_train"] + 1)
        assert identity(run_settings(flags, 1, other_data)) != base

    def csl_settings():
        flags = runner.cell_flags(args, protocol, runner.Group(0, "fpc", 73), _row("csl"), "l", prior, "c")
        return runner.run_settings(flags, 1, protocol.data_config)

    before = csl_settings()
    _write_prior(tmp_path / "prior.csv", [0.9, 0.3, 0.11] + [0.1] * 45)  # the same threshold (share rule)
    after = csl_settings()
    assert after["flags"] == before["flags"] and identity(after) != identity(before)  # stage 2: the content


def test_simulated_labels_are_reused_only_with_identical_settings(tmp_path, monkeypatch):
    simulated = []

    def simulate(command, log, env):  # 'runs' python -m coco_simulation: writes its --out file
        simulated.append(command)
        with open(command[command.index("--out") + 1], "w") as handle:
            handle.write(" ".join(command))

    monkeypatch.setattr(runner, "run_logged", simulate)
    args, protocol = _embedded(tmp_path)
    group = runner.Group(0, "fpc", 244)
    path = runner.simulate_labels(args, protocol, group, {})
    assert runner.simulate_labels(args, protocol, group, {}) == path and len(simulated) == 1
    with pytest.raises(ValueError, match="--simulate_partial_param 244 -> 100"):
        runner.simulate_labels(args, protocol, runner.Group(0, "fpc", 100), {})
    _, other_data = _embedded(tmp_path, "--n_test", "500")  # same flags, other generated dataset
    with pytest.raises(ValueError, match="the dataset's n_test 3000 -> 500"):
        runner.simulate_labels(args, other_data, group, {})
    assert len(simulated) == 1


def test_the_cached_backbone_is_named_after_all_its_settings(tmp_path):
    """Any setting of the pretraining (its flags, the user's train.py flags, its dataset) names another
    cache file; the cells' own schedule (--epochs, --stop_epoch) does not touch it."""
    _, plain = _embedded(tmp_path)
    assert _embedded(tmp_path)[1].upstream["path"] == plain.upstream["path"]
    for flags in (["--n_train", "1000"], ["--upstream_epochs", "2"], ["--design", "shape_colour"],
                  ["--weight_decay", "1e-3"], ["--lr", "1e-3"], ["--nproc_per_node", "2"]):
        assert _embedded(tmp_path, *flags)[1].upstream["path"] != plain.upstream["path"], flags
    for flags in (["--epochs", "2"], ["--stop_epoch", "1"], ["--n_test", "100"]):
        assert _embedded(tmp_path, *flags)[1].upstream["path"] == plain.upstream["path"], flags


def test_epr_cells_get_the_datas_known_mean_positives(tmp_path, monkeypatch):
    """EPR is given the true mean number of positives per image (Cole et al.): on the embedded protocol
    the full training labels' mean, on COCO their 2.9 - never an estimate from the FPC labels."""
    full = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=np.int8)  # 6 positives / 4 images
    monkeypatch.setattr(runner, "training_labels",
                        lambda protocol, data=None: (full, [1, 2, 3, 4], ["a", "b", "c"]))
    args, protocol = _embedded(tmp_path, "--rows", "epr")
    flags = runner.cell_flags(args, protocol, runner.Group(0, "fpc", 73), _row("epr"), "l.npz", None, "c")
    assert flags["epr_expected_positives"] == "1.5"
    args, protocol = _coco(tmp_path, "--rows", "epr")
    flags = runner.cell_flags(args, protocol, runner.Group(0, "fpc", 1000), _row("epr"), "l.npz", None, "c")
    assert flags["epr_expected_positives"] == "2.9"
    assert "epr_expected_positives" not in runner.cell_flags(args, protocol, runner.Group(0, "fpc", 1000),
                                                             _row("negative_ce"), "l.npz", None, "c")


# ------------------------------------------------------------------------ your own data (--dataset_type csv)
def _csv(tmp_path, data, *flags):
    args = reproduce.parse_args(["--dataset_type", "csv", "--data", str(data), "--out", str(tmp_path / "out"),
                                 *flags])
    return args, reproduce.build_protocol(args)


def test_a_complete_csv_has_its_ceiling_and_epr_its_mean(tmp_path):
    """A CSV without -1 in train.csv holds full labels: the full-label row runs, EPR's E is their mean."""
    data = tmp_path / "emb"
    embedded_main(["--out", str(data), "--n_train", "40", "--n_test", "8", "--format", "csv"])
    args, protocol = _csv(tmp_path, data, "--rows", "full_labels,epr")
    protocol.rows = protocols.select_rows(protocol, args.rows)
    full = protocols.full_training_labels(str(data), "csv", None)[0]
    assert protocol.train_flags["num-classes"] == 48 and protocol.train_flags["dataset_type"] == "csv"
    assert protocols.select_columns(protocol, args.schemes) == ["given"]  # the CSV's own labels
    assert protocol.columns == {"given": None}
    assert [row.key for row in protocols.protocol_rows(protocol)] == ["full_labels", "epr"]
    runner.check_before_running(protocol)
    flags = runner.cell_flags(args, protocol, runner.Group(0, "given", None), _row("epr"), None, None, "c")
    assert float(flags["epr_expected_positives"]) == pytest.approx((full == 1).sum(1).mean(), rel=1e-5)
    assert protocols.embedded_fpc_param(40) == reproduce.build_protocol(args).columns["fpc"]


@pytest.mark.slow
def test_the_table_on_a_hand_made_partial_csv(tmp_path, monkeypatch, capsys):
    """reproduce.py's cells on your data: column 'given' trains on the CSV's labels as they are, FPC is
    simulated on top with the CSV's class names; no ceiling (train.csv is partial), no paper numbers; EPR,
    whose E partial labels cannot give, is refused before anything runs."""
    data = tmp_path / "data"
    hand_made_dataset(str(data), "lists")
    out = tmp_path / "out"
    argv = ["--dataset_type", "csv", "--data", str(data), "--out", str(out), "--model-name", TINY_MODEL,
            "--model-path", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--seeds", "1", "--schemes", "given,fpc", "--device", "cpu", "--jobs", "1"]
    assert reproduce.cli([*argv, "--rows", "epr"]) == 2
    assert "--epr_expected_positives" in capsys.readouterr().err and not out.exists()

    monkeypatch.setattr(runner, "run_logged", run_in_this_process)
    assert reproduce.cli([*argv, "--rows", "full_labels,ignore_ce,negative_ce,csl"]) == 0
    table = json.loads((out / "results.json").read_text())
    assert {(r["row"], r["scheme"]) for r in table["table"]} == {
        (row, scheme) for row in ("ignore_ce", "negative_ce", "csl") for scheme in ("given", "fpc")}
    assert all(r["paper_mAP"] is None and r["share"] is None for r in table["table"])
    given = (out / "cells" / "given_seed0_csl" / "command.txt").read_text()
    assert "--partial_labels" not in given and "--dataset_type csv" in given
    assert "--prior_threshold 0.5" in given  # the paper's README threshold, not the embedded share rule
    fpc = _train_args(shlex.split((out / "cells" / "fpc_seed0_ignore_ce" / "command.txt").read_text()))
    assert read_partial_label_file(fpc.partial_labels).class_names == sorted(COLOURS)
    report_text = (out / "results.md").read_text()
    assert "as annotated" in report_text and "FPC(" in report_text
    assert "Estimating the class distribution" not in report_text  # no true frequencies to rank against
