"""reproduce.py: the threshold rule, the table arithmetic, and one tiny end-to-end table with resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import reproduce


def test_share_threshold_ignores_the_papers_share_of_classes():
    prior = np.array([0.10, 0.54, 0.24, 0.05])
    # 4 classes x 1/80 rounds to 0 -> at least one class: midpoint between the top two values.
    assert reproduce.share_threshold(prior) == pytest.approx((0.54 + 0.24) / 2)
    # 160 classes x 1/80 = 2 classes above the threshold.
    prior = np.linspace(0.01, 0.9, 160)
    threshold = reproduce.share_threshold(prior)
    assert (prior > threshold).sum() == 2


def test_paper_readme_threshold_ignores_one_of_80_coco_classes():
    # The rule's premise: on the paper's FPC(1000) prior only 'person' (0.54) exceeds 0.5; the next
    # value is chair's 0.24. Values taken from that file's top entries.
    top_values = [0.542279, 0.24080579, 0.22271717, 0.222363]
    assert sum(v > reproduce.README_PRIOR_THRESHOLD for v in top_values) == 1
    assert reproduce.PAPER_IGNORED_CLASS_SHARE == 1 / 80


def test_mean_std_uses_the_sample_standard_deviation():
    mean, std = reproduce.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(np.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert reproduce.mean_std([3.0]) == (3.0, 0.0)


def test_flags_to_argv_and_row_table():
    assert reproduce.flags_to_argv({"a": 1, "b": True, "c": False, "d": None}) == ["--a", "1", "--b"]
    keys = [row.key for row in reproduce.ROWS]
    assert keys == ["ignore_ce", "negative_ce", "negative_asl", "csl", "csl_readme_threshold"]
    csl = reproduce.ROWS[3]
    assert csl.needs_prior and csl.column_flags == {"fpc": {"gamma_neg": 3}, "rps": {"gamma_neg": 1}}
    assert all((scheme, key) in reproduce.PAPER_RESULTS for scheme in ("fpc", "rps") for key in keys)


def test_tiny_table_end_to_end_and_skip_on_rerun(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    argv = ["--data_root", str(tmp_path / "data"), "--models_dir", str(tmp_path / "models"),
            "--out", str(out), "--n_train", "320", "--n_test", "96", "--seeds", "1", "--schemes", "fpc",
            "--epochs", "2",
            "--batch-size", "32", "--upstream_epochs", "1", "--jobs", "1", "--device", "cpu"]
    reproduce.main(argv)

    table = json.loads((out / "results.json").read_text())
    rows = {row["row"]: row for row in table["table"]}
    assert set(rows) == {"ignore_ce", "negative_ce", "negative_asl", "csl", "csl_readme_threshold"}
    n_fpc = round(1000 / 82081 * 320)  # COCO's share of the training set
    assert table["protocol"]["columns"] == {"fpc": n_fpc}
    for row in rows.values():
        assert 0.0 < row["best_mAP"] <= 100.0 and row["best_mAP"] >= row["final_mAP"] - 1e-9
        assert row["seeds"] == 1 and row["paper_mAP"] is not None
    cells = {cell["row"]: cell for cell in table["cells"]}
    # CSL used the Ignore run's prior with the share rule's threshold, and its command line is stored.
    csl_command = (out / "cells" / "fpc_seed0_csl" / "command.txt").read_text()
    assert cells["ignore_ce"]["prior_path"] in csl_command and "--partial_loss_mode selective" in csl_command
    prior = reproduce.read_prior(cells["ignore_ce"]["prior_path"])
    assert cells["csl"]["prior_threshold"] == pytest.approx(reproduce.share_threshold(prior), rel=1e-5)
    readme_command = (out / "cells" / "fpc_seed0_csl_readme_threshold" / "command.txt").read_text()
    assert cells["csl_readme_threshold"]["prior_threshold"] == 0.5
    assert "--prior_threshold 0.5" in readme_command
    for name in ("results.csv", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "results.md").read_text()
    assert "Spearman" in report and "CSL, Selective P-ASL" in report

    # Re-running finds every cell finished: no training command is started again.
    started = []
    original = reproduce.run_logged

    def recording_run(command, log, env):
        started.append(command)
        return original(command, log, env)

    monkeypatch.setattr(reproduce, "run_logged", recording_run)
    mtime = os.path.getmtime(out / "cells" / "fpc_seed0_csl" / "result.json")
    reproduce.main(argv)
    assert started == []
    assert os.path.getmtime(out / "cells" / "fpc_seed0_csl" / "result.json") == mtime
    assert json.loads((out / "results.json").read_text())["table"] == table["table"]


def test_readme_threshold_row_runs_only_on_the_embedded_protocol(tmp_path):
    embedded = reproduce.embedded_protocol(reproduce.parse_args(["--data_root", str(tmp_path)]))
    coco = reproduce.coco_protocol(reproduce.parse_args(["--data", str(tmp_path)]))
    assert [r.key for r in reproduce.protocol_rows(embedded)][-1] == "csl_readme_threshold"
    assert "csl_readme_threshold" not in [r.key for r in reproduce.protocol_rows(coco)]
    assert coco.prior_threshold == "0.5" and embedded.prior_threshold == "share"
    row = reproduce.ROWS[-1]
    assert reproduce.resolve_threshold(embedded, row, "unused.csv") == 0.5  # no prior file needed


def test_rows_selection_brings_the_stage1_row_and_rejects_unknown_keys(tmp_path):
    protocol = reproduce.embedded_protocol(reproduce.parse_args(["--data_root", str(tmp_path)]))
    assert reproduce.select_rows(protocol, None) is None
    protocol.rows = reproduce.select_rows(protocol, "csl")
    assert protocol.rows == ("ignore_ce", "csl")  # CSL needs the Ignore run's prior
    assert [r.key for r in reproduce.protocol_rows(protocol)] == ["ignore_ce", "csl"]
    assert reproduce.select_rows(protocol, "negative_ce,negative_asl") == ("negative_ce", "negative_asl")
    with pytest.raises(SystemExit, match="--rows"):
        reproduce.select_rows(protocol, "csl,bogus")
    coco = reproduce.coco_protocol(reproduce.parse_args(["--data", str(tmp_path)]))
    with pytest.raises(SystemExit, match="csl_readme_threshold"):  # embedded-only row
        reproduce.select_rows(coco, "csl_readme_threshold")


def _write_prior(path, values):
    with open(path, "w") as handle:
        handle.write("Classes,avg_pred\n" + "".join(f"c{i},{v}\n" for i, v in enumerate(values)))
    return str(path)


def test_ignored_classes_compare_like_the_loss(tmp_path):
    prior = _write_prior(tmp_path / "prior.csv", [0.53, 0.43, 0.5, 0.2])
    assert reproduce.ignored_classes(prior, 0.5) == [0]  # strictly above; 0.5 itself is kept
    assert reproduce.ignored_classes(prior, 0.48) == [0, 2]
    assert reproduce.ignored_classes(prior, 0.0) == []  # threshold 0 disables the prior in the loss


def test_readme_row_reuses_the_csl_run_only_when_it_ignores_the_same_classes(tmp_path, monkeypatch):
    args = reproduce.parse_args(["--data_root", str(tmp_path), "--out", str(tmp_path / "out")])
    protocol = reproduce.embedded_protocol(args)
    group = reproduce.Group(0, "fpc", 73)
    row = reproduce.ROWS[-1]
    twin = {"row": "csl", "prior_threshold": 0.48, "best_mAP": 50.0, "final_mAP": 49.0, "seed": 0}
    started = []
    monkeypatch.setattr(reproduce, "run_logged", lambda command, log, env: started.append(command))
    monkeypatch.setattr(reproduce, "summarise_run", lambda path: {"best_mAP": 1.0, "final_mAP": 1.0})

    same = _write_prior(tmp_path / "same.csv", [0.53, 0.43, 0.2])  # 0.48 and 0.5 both ignore class 0
    result = reproduce.run_cell(args, protocol, group, row, "labels.npz", same, {}, twin)
    assert started == [] and result["same_run_as"] == "csl" and result["best_mAP"] == 50.0
    assert result["row"] == row.key and result["prior_threshold"] == 0.5 and result["ignored_classes"] == [0]

    group = reproduce.Group(1, "fpc", 73)
    other = _write_prior(tmp_path / "other.csv", [0.53, 0.49, 0.2])  # 0.48 also ignores class 1
    result = reproduce.run_cell(args, protocol, group, row, "labels.npz", other, {}, twin)
    assert len(started) == 1 and "same_run_as" not in result and result["best_mAP"] == 1.0
