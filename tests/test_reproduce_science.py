"""Issue 19: schedules at the protocol's length, paired intervals, the separating cell, --output_stride and
``reproduce.py --sensitivity`` (configuration on tiny data; no long run)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from src.args import build_train_parser
from src.data.embedded import ensure_dataset
from src.models import create_model, model_metadata
from src.models.loading import build_model_from_checkpoint
from src.reproduce import protocols, report, runner, sensitivity
from src.reproduce.protocols import ROWS, scaled_schedule
from tests.test_reproduce import _embedded, _fake_training, _train_args, _write_prior


def _cells(started):
    parsed = (_train_args(command) for command in started if runner.TRAIN_SCRIPT in command)
    return {os.path.basename(p.path_dest): p for p in parsed}


# ----------------------------------------------------------------------------------- item 2: schedules
def test_scaled_schedule_keeps_each_methods_fraction_of_training():
    # LL: delta is a per-epoch step from epoch 2; the last epoch's share (T - 1) x delta stays the official
    # one at 10 epochs: LL-R 9 x 0.005 = 4.5% -> at 6 epochs 5 x 0.009.
    assert scaled_schedule("ll_r", 6) == {"ll_r_delta": 0.009}
    assert (6 - 1) * scaled_schedule("ll_r", 6)["ll_r_delta"] == pytest.approx((10 - 1) * 0.005)
    assert scaled_schedule("ll_ct", 6) == {"ll_ct_delta": 0.0036}  # 9 x 0.002 / 5
    assert scaled_schedule("ll_cp", 6) == {"ll_cp_delta": 0.0018}  # 9 x 0.001 / 5
    assert scaled_schedule("ll_r", 10) == {"ll_r_delta": 0.005}  # the official length: the official value
    # EM-APL: warm-up 5 of 10 epochs -> 3 of 6: passes after epochs 3, 4, 5 (three of 30%) instead of one.
    assert scaled_schedule("em_apl", 6) == {"apl_warmup_epochs": 3}
    assert scaled_schedule("em_apl", 10) == {"apl_warmup_epochs": 5}
    assert scaled_schedule("em_apl", 2) == {"apl_warmup_epochs": 1}  # at least one epoch before, one after
    # SPLC: 1 of its 30 epochs before the correction (start epoch 2); at least one epoch, so 2 at 6 epochs;
    # 60 epochs -> 2 epochs before -> start epoch 3.
    assert scaled_schedule("splc", 6) == {"splc_start_epoch": 2}
    assert scaled_schedule("splc", 60) == {"splc_start_epoch": 3}
    assert scaled_schedule("gr", 6) == {} and scaled_schedule("hill", 6) == {}  # GR: already e / T


def test_schedule_rows_reach_train_py_scaled_beside_the_literal_rows(tmp_path, monkeypatch):
    args, protocol = _embedded(tmp_path, "--rows", "schedules")
    protocol.rows = protocols.select_rows(protocol, args.rows)
    assert set(protocol.rows) >= {"ll_r", "ll_r_scaled", "em_apl", "em_apl_scaled", "ll_r_boostlu_scaled"}
    labels = {row.key: row.label for row in ROWS}
    assert labels["ll_r"].endswith("(literal schedule)")
    assert labels["ll_r_scaled"].endswith("(scaled schedule)")
    started = _fake_training(monkeypatch, _write_prior(tmp_path / "p.csv", [0.9] + [0.1] * 47))
    runner.run_group(args, protocol, runner.Group(0, "fpc", 73), {})
    cells = _cells(started)
    assert cells["fpc_seed0_ll_r_scaled"].ll_r_delta == pytest.approx(0.009)
    assert cells["fpc_seed0_ll_r"].ll_r_delta in (None, 0.005)  # literal: the official value
    assert cells["fpc_seed0_em_apl_scaled"].apl_warmup_epochs == 3
    assert cells["fpc_seed0_ll_cp_scaled"].ll_cp_delta == pytest.approx(0.0018)
    boosted = cells["fpc_seed0_ll_r_boostlu_scaled"]
    assert (boosted.boostlu_alpha, boosted.ll_r_delta) == (5.0, pytest.approx(0.009))
    # another protocol length scales anew: 11 epochs -> 0.005 x 9 / 10
    args, protocol = _embedded(tmp_path, "--epochs", "11")
    flags = runner.cell_flags(args, protocol, runner.Group(0, "fpc", 73), next(r for r in ROWS if r.key ==
                              "ll_r_scaled"), "l.npz", None, "c")
    assert flags["ll_r_delta"] == pytest.approx(0.0045)


# ----------------------------------------------------------------------------------- item 3: intervals
def test_paired_difference_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.303 -> half-width 4.303 / sqrt(3) = 2.4843
    mean, low, high, agree, n = report.paired_difference({0: 11.0, 1: 12.0, 2: 13.0, 5: 99.0},
                                                         {0: 10.0, 1: 10.0, 2: 10.0})
    assert (mean, agree, n) == (pytest.approx(2.0), 3, 3)
    assert (low, high) == (pytest.approx(2 - 2.4843, abs=1e-4), pytest.approx(2 + 2.4843, abs=1e-4))
    # +0.77 / -0.11 / +0.85 (the prior-only row against Negative): 2 of 3 agree, the interval holds 0
    mean, low, high, agree, n = report.paired_difference({0: 0.77, 1: -0.11, 2: 0.85}, {0: 0, 1: 0, 2: 0})
    assert (round(mean, 4), agree, report.verdict(low, high)) == (0.5033, 2, "tied")
    assert report.verdict(0.1, 2.0) == "beats" and report.verdict(-2.0, -0.1) == "below"
    mean, low, high, agree, n = report.paired_difference({0: 3.0}, {0: 1.0})
    assert (mean, agree, n, math.isnan(low)) == (2.0, 1, 1, True)
    assert report.verdict(low, high) == "one seed: no interval"
    with pytest.raises(ValueError, match="share no seed"):
        report.paired_difference({0: 1.0}, {1: 1.0})


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 80):
        assert report.t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3), df
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5), rng.normal(size=5)
    _, low, high, _, _ = report.paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    d = a - b
    expected = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (low, high) == (pytest.approx(expected[0], abs=1e-3), pytest.approx(expected[1], abs=1e-3))


def test_results_md_gets_the_paired_table_against_the_best_baseline_and_negative(tmp_path):
    _, protocol = _embedded(tmp_path, "--rows", "ignore_ce,negative_ce,negative_asl,csl")
    protocol.rows = protocols.select_rows(protocol, "ignore_ce,negative_ce,negative_asl,csl")
    protocol.columns = {"fpc": 244}
    scores = {"ignore_ce": (60, 61, 62), "negative_ce": (70, 71, 72), "negative_asl": (69, 72, 75),
              "csl": (71, 72, 73)}
    results = [{"row": row, "scheme": "fpc", "seed": seed, "best_mAP": float(value)}
               for row, values in scores.items() for seed, value in enumerate(values)]
    table = report.paired_table(results, protocol)
    # best baseline by mean: negative_asl 72 > negative_ce 71; CSL - Negative = +1 in every seed: sd 0
    assert "| CSL, Selective P-ASL | FPC(244) | negative_ce | +1.00 | [+1.00, +1.00] | 3/3 | beats |" in table
    # CSL - Negative-ASL: +2, 0, -2: mean 0, sd 2, half-width 4.303 x 2 / sqrt(3) = 4.97
    assert "| CSL, Selective P-ASL | FPC(244) | negative_asl (best baseline) | +0.00 | [-4.97, +4.97] |" \
        in table
    assert "| Ignore, CE | FPC(244) | negative_ce | -10.00 |" in table
    assert "negative_asl (best baseline) | +0.00" in table and table.count("| Negative, CE |") == 1


def test_the_paired_table_splits_a_difference_into_its_components(tmp_path):
    """The prior-only row against Negative (+0.50 in the docs) is the sum of CSL's focusing (negative_focal -
    negative_ce) and the prior (csl_prior_only - negative_focal): each is its own line of the table."""
    keys = "negative_ce,negative_focal,csl_prior_only,ll_r,ll_r_scaled"
    _, protocol = _embedded(tmp_path, "--rows", keys)
    protocol.rows = protocols.select_rows(protocol, keys)
    protocol.columns = {"fpc": 244}
    scores = {"ignore_ce": (60, 60, 60), "negative_ce": (70, 71, 72), "negative_focal": (70.5, 71.2, 72.1),
              "csl_prior_only": (71.0, 71.0, 73.0), "ll_r": (50, 51, 52), "ll_r_scaled": (52, 51, 54)}
    results = [{"row": row, "scheme": "fpc", "seed": seed, "best_mAP": float(value)}
               for row, values in scores.items() for seed, value in enumerate(values)]
    table = report.paired_table(results, protocol)
    lines = {tuple(cell.strip() for cell in line.split("|")[1:4]): line for line in table.splitlines()[2:]}
    focal = "Negative, CSL's focusing (no prior)"
    # focusing: +0.5, +0.2, +0.1 -> +0.27; the prior: +0.5, -0.2, +0.9 -> +0.40; together +0.67
    assert "| +0.27 |" in lines[(focal, "FPC(244)", "negative_ce (best baseline)")]
    assert "| +0.40 |" in lines[("CSL, prior only (top-k 0)", "FPC(244)", "negative_focal")]
    assert "| +0.67 |" in lines[("CSL, prior only (top-k 0)", "FPC(244)", "negative_ce (best baseline)")]
    # a scaled schedule against its literal row: +2, 0, +2
    scaled = next(row.label for row in protocols.ROWS if row.key == "ll_r_scaled")
    assert "| +1.33 |" in lines[(scaled, "FPC(244)", "ll_r")]


def test_the_separating_cell_has_csls_focusing_and_neither_prior_nor_top_k(tmp_path, monkeypatch):
    args, protocol = _embedded(tmp_path, "--rows", "mechanism")
    protocol.rows = protocols.select_rows(protocol, args.rows)
    assert "negative_focal" in protocol.rows and "negative_ce" in protocol.rows
    started = _fake_training(monkeypatch, _write_prior(tmp_path / "p.csv", [0.9] + [0.1] * 47))
    for scheme, gamma_neg in (("fpc", 3), ("rps", 1)):  # CSL's README gammas per column
        runner.run_group(args, protocol, runner.Group(0, scheme, 73), {})
        focal, csl = _cells(started)[f"{scheme}_seed0_negative_focal"], _cells(started)[f"{scheme}_seed0_csl"]
        assert focal.partial_loss_mode == "negative" and focal.prior_path is None
        assert (focal.gamma_pos, focal.gamma_neg, focal.gamma_unann) == (0, gamma_neg, 4)
        assert (csl.gamma_pos, csl.gamma_neg, csl.gamma_unann) == (focal.gamma_pos, focal.gamma_neg,
                                                                    focal.gamma_unann)


# ----------------------------------------------------------------------------------- item 5: sensitivity
def test_output_stride_gives_the_head_a_4x4_map_and_is_stored_in_the_checkpoint():
    plain = create_model(model_name="test_resnet.r160_in1k", num_classes=3).eval()
    model = create_model(model_name="test_resnet.r160_in1k", num_classes=3, output_stride=8).eval()
    with torch.no_grad():
        assert plain.forward_features(torch.zeros(2, 3, 32, 32)).shape[-2:] == (1, 1)
        assert model.forward_features(torch.zeros(2, 3, 32, 32)).shape[-2:] == (4, 4)
    assert model_metadata(model)["output_stride"] == 8 and model_metadata(plain)["output_stride"] is None
    rebuilt, _, architecture = build_model_from_checkpoint({"model": model.state_dict(),
                                                            **model_metadata(model)}, "x.pth")
    assert rebuilt.output_stride == 8 and architecture["output_stride"] == 8
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        create_model(model_name="test_resnet.r160_in1k", num_classes=3, output_stride=4)
    assert build_train_parser().parse_args(["--output_stride", "8"]).output_stride == 8


def test_sensitivity_points_lift_one_limit_each_and_their_flags_reach_train_py(tmp_path):
    args, _ = _embedded(tmp_path, "--sensitivity")
    _, default = _embedded(tmp_path)
    points = {p.name: p for p in sensitivity.SENSITIVITY_POINTS}
    assert len(points) == 4
    seen, prior = {}, _write_prior(tmp_path / "p.csv", [0.9] + [0.1] * 47)
    for name, point in points.items():
        point_args, protocol = sensitivity.point_protocol(args, point, {})
        assert protocol.rows == sensitivity.SENSITIVITY_ROWS and point_args.out.endswith(name)
        cell = runner.cell_flags(point_args, protocol, runner.Group(0, "fpc", 244),
                                 next(r for r in ROWS if r.key == "csl"), "l.npz", prior, "c")
        parsed = build_train_parser().parse_args(protocols.flags_to_argv(cell))
        upstream = build_train_parser().parse_args(protocols.flags_to_argv(protocol.upstream["flags"]))
        assert parsed.output_stride == upstream.output_stride == point.output_stride
        assert (parsed.epochs, parsed.image_size) == (6, 32)  # the default's schedule and size
        seen[name] = (protocol, upstream)
    assert seen["a_spatial_4x4"][1].output_stride == 8
    assert seen["b_same_classes_upstream"][1].output_stride is None
    for name in ("b_same_classes_upstream", "ab_spatial_same_classes"):  # downstream classes, other images
        protocol, upstream = seen[name]
        assert protocol.upstream["config"]["variant"] == "embedded" and upstream.num_classes == 48
        assert protocol.upstream["config"]["seed"] != protocol.data_config["seed"]
        assert protocol.upstream["path"] != default.upstream["path"]
    assert seen["c_missing_labels"][0].upstream["path"] == default.upstream["path"]  # reused backbone
    assert seen["a_spatial_4x4"][0].upstream["path"] != default.upstream["path"]  # pretrained at stride 8
    noisy = seen["c_missing_labels"][0]
    assert noisy.truth_data == default.data and noisy.data != default.data and "missing0.1" in noisy.data


def test_a_points_time_is_its_cells_recorded_seconds_and_its_own_upstream_epochs(tmp_path):
    upstream = tmp_path / "upstream" / "backbone"
    upstream.mkdir(parents=True)
    (upstream / "metrics.jsonl").write_text('{"epoch": 1, "time_s": 50.0}\n{"epoch": 2, "time_s": 40.0}\n')
    results = [{"row": "full_labels", "scheme": "full", "seed": 0, "seconds": 100.0},
               {"row": "csl", "scheme": "fpc", "seed": 0, "seconds": 200.0},
               {"row": "csl_readme_threshold", "scheme": "fpc", "seed": 0, "seconds": 0.0}]  # a twin
    assert sensitivity.point_cell_seconds(str(tmp_path), results) == 390.0
    assert sensitivity.point_cell_seconds(str(tmp_path / "none"), results) == 300.0  # reused backbone


def test_missing_labels_drop_present_pairs_from_train_only(tmp_path):
    clean = tmp_path / "clean"
    ensure_dataset(clean, n_train=200, n_test=20, design="glyphs")
    sensitivity.write_missing_labels(str(clean), str(tmp_path / "noisy"), 0.3, 0)

    def pairs(folder, split):
        data = json.loads((folder / "annotations" / f"instances_{split}2014.json").read_text())
        return {(a["image_id"], a["category_id"]) for a in data["annotations"]}

    full, kept = pairs(clean, "train"), pairs(tmp_path / "noisy", "train")
    assert kept < full and abs(1 - len(kept) / len(full) - 0.3) < 0.08  # about 30% of ~600 pairs dropped
    assert pairs(clean, "val") == pairs(tmp_path / "noisy", "val")  # the test labels stay the truth
    assert os.path.samefile(clean / "train2014", tmp_path / "noisy" / "train2014")
    before = (tmp_path / "noisy" / "annotations" / "instances_train2014.json").stat().st_mtime_ns
    sensitivity.write_missing_labels(str(clean), str(tmp_path / "noisy"), 0.3, 0)  # same settings: kept
    assert (tmp_path / "noisy" / "annotations" / "instances_train2014.json").stat().st_mtime_ns == before


def test_a_sign_change_runs_three_seeds_in_that_column_only(tmp_path, monkeypatch):
    args, _ = _embedded(tmp_path, "--sensitivity")
    # CSL above the best baseline (Negative-ASL 72) in both columns: FPC's sign differs from the default's
    # -11.77 (3 seeds), RPS's is the default's +0.32 (stays 1 seed).
    scores = {"full_labels": 80.0, "ignore_ce": 60.0, "negative_ce": 70.0, "negative_asl": 72.0,
              "csl": 73.0, "csl_prior_only": 71.0}
    monkeypatch.setattr(runner, "prepare_embedded", lambda *a: None)
    monkeypatch.setattr(runner, "run_logged", lambda command, log, env: None)
    def summarise_run(path):  # CSL gains 0.5 per seed: margins 1.0, 1.5, 2.0 over the 3 seeds
        _, seed, row = os.path.basename(path).split("_", 2)  # e.g. fpc_seed1_csl_prior_only
        seed = int(seed.removeprefix("seed"))
        return {"best_mAP": scores[row] + (0.5 * seed if row == "csl" else 0.0), "final_mAP": 1.0}

    monkeypatch.setattr(runner, "summarise_run", summarise_run)
    prior = _write_prior(tmp_path / "p.csv", [0.5] + [0.1] * 47)
    monkeypatch.setattr(runner, "find_prior", lambda path: prior)
    composition = {"entries": 100, "prior_ignored_share": 0.05, "true_positive_share": 0.25,
                   "shares_colour_share": 0.3, "shares_core_colour_share": 0.1, "shares_shape_share": 0.3,
                   "other_share": 0.15}
    monkeypatch.setattr(runner, "cell_composition", lambda *a: composition)
    monkeypatch.setattr(report, "prior_tables", lambda *a: "")
    text = sensitivity.run_sensitivity(args, {}, 1, {}, points=sensitivity.SENSITIVITY_POINTS[:1])
    lines = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    assert [(line["scheme"], line["seeds"]) for line in lines] == [("fpc", 3), ("rps", 1)]
    # 3 seeds: mean 1.5, sd 0.5, half-width t(0.975, 2) 4.3027 x 0.5 / sqrt(3) = 1.2421
    assert lines[0]["csl_margin"] == pytest.approx(1.5) and lines[0]["best_baseline"] == "negative_asl"
    interval = (lines[0]["csl_margin_low"], lines[0]["csl_margin_high"])
    assert interval == pytest.approx((0.2579, 2.7421), abs=1e-3)
    assert lines[1]["csl_margin"] == pytest.approx(1.0) and lines[1]["csl_margin_low"] is None  # one seed
    assert lines[0]["csl_prior_only_mAP"] == 71.0 and lines[0]["ignored_true_positive_share"] == 0.25
    assert lines[0]["ignored_prior_class_share"] == pytest.approx(0.05)
    assert "| a_spatial_4x4 | (a) 4 x 4 map | FPC(244) | 3 | 80.0 | 0.75 | 0.88 | negative_asl 72.00 " \
        "| 73.50 | +1.50 [+0.26, +2.74] | 71.00 | 25.0% | 5.0% |" in text
    # the point's own report keeps the one-seed column beside the rerun one
    point_report = (tmp_path / "out" / "sensitivity" / "a_spatial_4x4" / "results.md").read_text()
    assert "FPC(244) best" in point_report and "RPS(0.5) best" in point_report
    assert "over 3 (FPC(244)), 1 (RPS(0.5)) seed(s)" in point_report
