"""Partial-label simulation: exact FPC counts, RPS binomial bounds, per-image modes, files and the CLI."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from coco_simulation.simulate import simulate_coco
from src.args import build_train_parser, data_parser, partial_labels_parser
from src.data.labels import LabelMatrix
from src.data.partial_labels import (
    known_count,
    load_partial_labels,
    read_partial_label_file,
    save_partial_labels,
    simulate_partial_labels,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

ALL_MODES = [("fpc", 7), ("rps", 0.4), ("known_ratio", 0.5), ("single_positive", 0)]


def full_labels(num_images=200, num_classes=12, seed=0, unannotated=0.0):
    """Random multi-hot labels with per-class rates from 2% to 60%, optionally some -1 entries."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.02, 0.6, num_classes)
    labels = (rng.random((num_images, num_classes)) < rates).astype(np.int8)
    labels[rng.random(labels.shape) < unannotated] = -1
    return labels


def test_fpc_keeps_exactly_min_n_positives_and_negatives_per_class():
    labels = full_labels(unannotated=0.1)
    n = 15
    out = simulate_partial_labels(labels, "fpc", n, seed=3)
    assert out.dtype == np.int8 and out.shape == labels.shape
    for c in range(labels.shape[1]):
        n_pos, n_neg = (labels[:, c] == 1).sum(), (labels[:, c] == 0).sum()
        assert (out[:, c] == 1).sum() == min(n, n_pos)
        assert (out[:, c] == 0).sum() == min(n, n_neg)
    kept = out != -1
    np.testing.assert_array_equal(out[kept], labels[kept])  # kept entries keep their original value


def test_fpc_extremes_and_alias():
    labels = full_labels()
    assert (simulate_partial_labels(labels, "fpc", 0, 0) == -1).all()
    np.testing.assert_array_equal(simulate_partial_labels(labels, "fix_per_class", 10**6, 0), labels)
    np.testing.assert_array_equal(
        simulate_partial_labels(labels, "fpc", 9, 5), simulate_partial_labels(labels, "fix_per_class", 9.0, 5)
    )


def test_fpc_selection_is_uniform_over_candidates():
    # One class with 10 positives, keep 3: each positive is kept with probability 0.3.
    labels = np.zeros((40, 1), dtype=np.int8)
    labels[:10, 0] = 1
    trials = 600
    hits = sum((simulate_partial_labels(labels, "fpc", 3, seed)[:10, 0] == 1) for seed in range(trials))
    sigma = np.sqrt(trials * 0.3 * 0.7)
    assert np.all(np.abs(hits - 0.3 * trials) < 5 * sigma)


def test_rps_removes_each_annotated_label_with_probability_p():
    labels = full_labels(num_images=400, num_classes=25, unannotated=0.05)
    p = 0.3
    out = simulate_partial_labels(labels, "rps", p, seed=11)
    annotated = labels != -1
    removed = int((annotated & (out == -1)).sum())
    n = int(annotated.sum())
    assert abs(removed - p * n) < 5 * np.sqrt(n * p * (1 - p))
    kept = out != -1
    np.testing.assert_array_equal(out[kept], labels[kept])
    np.testing.assert_array_equal(simulate_partial_labels(labels, "random_per_sample", 0.0, 1), labels)
    assert (simulate_partial_labels(labels, "rps", 1.0, 1) == -1).all()


def test_known_count_rounding_rule():
    counts = np.array([0, 1, 2, 3, 4, 10])
    np.testing.assert_array_equal(known_count(0.5, counts), [0, 1, 1, 2, 2, 5])  # half up: 1.5 -> 2
    np.testing.assert_array_equal(known_count(0.1, counts), [0, 1, 1, 1, 1, 1])  # at least one
    np.testing.assert_array_equal(known_count(0.0, counts), [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(known_count(1.0, counts), counts)


def test_known_ratio_keeps_the_rounded_fraction_per_image():
    labels = full_labels(unannotated=0.1)
    ratio = 0.3
    out = simulate_partial_labels(labels, "known_ratio", ratio, seed=2)
    for value in (1, 0):
        for i in range(labels.shape[0]):
            n = int((labels[i] == value).sum())
            expected = 0 if n == 0 else max(1, int(np.floor(ratio * n + 0.5)))
            assert (out[i] == value).sum() == expected
    kept = out != -1
    np.testing.assert_array_equal(out[kept], labels[kept])


def test_single_positive_keeps_one_original_positive_per_image():
    labels = full_labels(unannotated=0.1)
    out = simulate_partial_labels(labels, "single_positive", 0, seed=4)
    has_positive = (labels == 1).any(axis=1)
    np.testing.assert_array_equal((out == 1).sum(axis=1), has_positive.astype(int))
    assert not (out == 0).any()
    assert ((out == 1) <= (labels == 1)).all()
    # The mode takes no parameter: None (the default) draws the same labels.
    np.testing.assert_array_equal(simulate_partial_labels(labels, "single_positive", seed=4), out)
    with pytest.raises(ValueError, match="for mode 'fix_per_class' must be a number"):
        simulate_partial_labels(labels, "fpc", seed=4)
    # Uniform among the positives of an image: a row with 4 positives, each picked ~1/4 of the time.
    row = np.array([[1, 1, 0, 1, -1, 1]], dtype=np.int8)
    picks = np.stack([simulate_partial_labels(row, "single_positive", 0, s)[0] == 1 for s in range(800)])
    counts = picks.sum(axis=0)[[0, 1, 3, 5]]
    assert np.all(np.abs(counts - 200) < 5 * np.sqrt(800 * 0.25 * 0.75))


@pytest.mark.parametrize("mode,param", ALL_MODES)
def test_deterministic_by_seed_and_preserves_existing_unannotated(mode, param):
    labels = full_labels(unannotated=0.15)
    before = labels.copy()
    first = simulate_partial_labels(labels, mode, param, seed=7)
    np.testing.assert_array_equal(first, simulate_partial_labels(labels, mode, param, seed=7))
    assert not np.array_equal(first, simulate_partial_labels(labels, mode, param, seed=8))
    assert (first[labels == -1] == -1).all()
    np.testing.assert_array_equal(labels, before)  # the input is not modified


@pytest.mark.parametrize(
    "mode,param,message",
    [
        ("drop_half", 0.5, "not a partial-label simulation mode"),
        ("fpc", -1, "non-negative integer"),
        ("fpc", 2.5, "non-negative integer"),
        ("rps", 1.5, r"\[0, 1\]"),
        ("known_ratio", -0.1, r"\[0, 1\]"),
        ("rps", "half", "must be a number"),
    ],
)
def test_bad_mode_or_param_is_a_clear_error(mode, param, message):
    with pytest.raises(ValueError, match=message):
        simulate_partial_labels(full_labels(), mode, param, 0)


def test_bad_label_matrix_is_a_clear_error():
    with pytest.raises(ValueError, match="2-D"):
        simulate_partial_labels(np.zeros(5), "fpc", 1, 0)
    with pytest.raises(ValueError, match=r"found \[2\]"):
        simulate_partial_labels(np.full((2, 2), 2), "fpc", 1, 0)


class FakeDataset:
    def __init__(self, labels):
        self.labels = LabelMatrix.from_dense(labels)

    def set_labels(self, labels):
        self.labels = LabelMatrix.from_dense(labels)


def test_simulate_coco_uses_the_paper_flags_and_set_labels():
    labels = full_labels()
    dataset = FakeDataset(labels)
    args = SimpleNamespace(simulate_partial_type="fpc", simulate_partial_param=12, seed=5)
    assert simulate_coco(args, dataset) is dataset
    np.testing.assert_array_equal(dataset.labels.to_dense(), simulate_partial_labels(labels, "fpc", 12, 5))
    # No seed attribute: seed 0; no simulation type: unchanged (as the paper code).
    dataset = simulate_coco(
        SimpleNamespace(simulate_partial_type="rps", simulate_partial_param=0.5), FakeDataset(labels)
    )
    np.testing.assert_array_equal(dataset.labels.to_dense(), simulate_partial_labels(labels, "rps", 0.5, 0))
    untouched = simulate_coco(SimpleNamespace(simulate_partial_type=None), FakeDataset(labels))
    np.testing.assert_array_equal(untouched.labels.to_dense(), labels)


def test_save_load_round_trip(tmp_path):
    labels = simulate_partial_labels(full_labels(num_images=30, num_classes=4), "rps", 0.5, 0)
    names, ids = ["cat", "dog", "car", "tree"], list(range(100, 130))
    path = save_partial_labels(tmp_path / "sub" / "p.npz", labels, names, ids, {"mode": "rps", "param": 0.5})
    loaded = load_partial_labels(path, class_names=names, image_ids=ids)
    assert loaded.dtype == np.int8
    np.testing.assert_array_equal(loaded, labels)
    contents = read_partial_label_file(path)
    assert contents.class_names == names and contents.image_ids == ids
    assert contents.meta == {"mode": "rps", "param": 0.5}
    # String ids (OpenImages) round-trip too.
    str_ids = [f"img{i:03d}" for i in range(30)]
    save_partial_labels(tmp_path / "s.npz", labels, names, str_ids)
    np.testing.assert_array_equal(load_partial_labels(tmp_path / "s.npz", names, str_ids), labels)


def test_load_mismatch_errors_name_the_file_and_the_difference(tmp_path):
    labels = full_labels(num_images=6, num_classes=3)
    names, ids = ["a", "b", "c"], [1, 2, 3, 4, 5, 6]
    path = str(tmp_path / "p.npz")
    save_partial_labels(path, labels, names, ids)
    with pytest.raises(
        ValueError, match=r"p\.npz.*class names.*#1: file 'b' vs dataset 'x'.*coco_simulation"
    ):
        load_partial_labels(path, class_names=["a", "x", "c"])
    with pytest.raises(ValueError, match=r"image ids.*different order"):
        load_partial_labels(path, image_ids=[2, 1, 3, 4, 5, 6])
    with pytest.raises(ValueError, match=r"file has 6 image ids, the dataset has 5"):
        load_partial_labels(path, image_ids=ids[:5])
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_partial_labels(tmp_path / "missing.npz")
    np.savez(tmp_path / "foreign.npz", labels=labels)
    with pytest.raises(
        ValueError, match=r"foreign\.npz lacks field\(s\) \['class_names', 'image_ids', 'meta'\]"
    ):
        load_partial_labels(tmp_path / "foreign.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_partial_labels(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match=r"shape \(6, 3\) but there are 6 image ids and 4 class names"):
        save_partial_labels(tmp_path / "bad.npz", labels, names[:2] + ["c", "d"], ids)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    from src.data.embedded import generate_embedded_dataset

    root = tmp_path_factory.mktemp("embedded")
    generate_embedded_dataset(root, n_train=120, n_test=20, seed=1)
    return root


def test_cli_writes_labels_stats_and_plot(tiny_coco, tmp_path, capsys):
    from coco_simulation.__main__ import main
    from src.data import resolve_coco_files
    from src.data.coco import CocoDetection
    from src.data.embedded import EMBEDDED_CLASS_NAMES

    out, plot = tmp_path / "fpc.npz", tmp_path / "freq.png"
    argv = [
        "--data",
        str(tiny_coco),
        "--simulate_partial_type",
        "fpc",
        "--simulate_partial_param",
        "10",
        "--seed",
        "3",
        "--out",
        str(out),
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "red_circle" in printed and "positives" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000

    dataset = CocoDetection(*resolve_coco_files(str(tiny_coco), None, "train"))
    contents = read_partial_label_file(out)
    assert contents.class_names == EMBEDDED_CLASS_NAMES and contents.image_ids == list(dataset.ids)
    assert contents.meta["mode"] == "fix_per_class" and contents.meta["seed"] == 3
    expected = simulate_partial_labels(dataset.labels.to_dense(), "fpc", 10, 3)
    np.testing.assert_array_equal(contents.labels, expected)


def test_cli_plots_next_to_the_labels_by_default_and_none_skips_it(tiny_coco, tmp_path):
    from coco_simulation.__main__ import main

    argv = ["--data", str(tiny_coco), "--simulate_partial_type", "rps", "--simulate_partial_param", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "a.npz")]) == 0
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*argv, "--out", str(tmp_path / "b.npz"), "--plot", "none"]) == 0
    assert (tmp_path / "b.npz").exists() and not (tmp_path / "b.png").exists()


def test_training_reads_the_cli_file_through_build_datasets(tiny_coco, tmp_path):
    from coco_simulation.__main__ import main
    from src.data import build_datasets

    out = tmp_path / "rps.npz"
    main(
        [
            "--data",
            str(tiny_coco),
            "--simulate_partial_type",
            "rps",
            "--simulate_partial_param",
            "0.5",
            "--out",
            str(out),
        ]
    )
    parser = argparse.ArgumentParser(parents=[data_parser(), partial_labels_parser()])
    args = parser.parse_args(["--data", str(tiny_coco), "--metadata", "", "--image-size", "32",
                              "--partial_labels", str(out)])
    train, _ = build_datasets(args)
    partial = load_partial_labels(out)
    assert (partial == -1).any()  # the file really is partial, so equality below is informative
    np.testing.assert_array_equal(train.labels.to_dense(), partial)


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_imports_point_down_and_the_simulation_module_is_pure():
    """src never imports the top-level coco_simulation package (coco_simulation imports src), and
    src/data/partial_labels.py neither prints nor reads an args namespace."""
    offenders = [str(path.relative_to(REPO_ROOT)) for path in sorted((REPO_ROOT / "src").rglob("*.py"))
                 if any(name.split(".")[0] == "coco_simulation" for name in _imported_modules(path))]
    assert offenders == []
    tree = ast.parse((REPO_ROOT / "src" / "data" / "partial_labels.py").read_text(encoding="utf-8"))
    calls = {node.func.id for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert "print" not in calls and "args" not in names and "getattr" not in calls


def _print_calls_outside_main(path: Path) -> list[int]:
    """Line numbers of print() calls that are not inside a function named ``main`` (a command line)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside_main = {id(node) for function in ast.walk(tree)
                   if isinstance(function, ast.FunctionDef) and function.name == "main"
                   for node in ast.walk(function)}
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
            and id(node) not in inside_main]


def test_data_and_model_libraries_print_nothing():
    paths = [path for package in ("data", "models")
             for path in sorted((REPO_ROOT / "src" / package).glob("*.py"))]
    prints = {str(path.relative_to(REPO_ROOT)): _print_calls_outside_main(path) for path in paths}
    assert {name: lines for name, lines in prints.items() if lines} == {}


def test_cli_flags_are_train_py_declarations_and_the_papers_command_still_parses():
    """The simulation's data and simulation flags are train.py's (src/args.py), not copies: same option
    strings, type, choices, help and default - except the documented default mode (fpc, not "none")."""
    from coco_simulation.__main__ import SHARED_FLAGS, parse_args, shared_flags_parser

    train = {action.dest: action for action in build_train_parser()._actions}
    ours = {action.dest: action for action in shared_flags_parser()._actions}
    assert set(ours) == set(SHARED_FLAGS) == {"data", "metadata", "dataset_type", "skip_bad_images",
                                              "simulate_partial_type", "simulate_partial_param", "seed"}
    for dest, action in ours.items():
        fields = ("option_strings", "type", "choices", "help", "nargs")
        assert [getattr(action, f) for f in fields] == [getattr(train[dest], f) for f in fields], dest
    paper = ["--data", "D", "--simulate_partial_type", "rps", "--simulate_partial_param", "0.5",
             "--seed", "2"]
    args, defaults = parse_args([*paper, "--out", "p.npz"]), parse_args(["--out", "p.npz"])
    assert (args.data, args.simulate_partial_type, args.simulate_partial_param, args.seed) == (
        "D", "rps", 0.5, 2)
    train_defaults = build_train_parser().parse_args([])
    for dest in SHARED_FLAGS:
        expected = "fpc" if dest == "simulate_partial_type" else getattr(train_defaults, dest)
        assert getattr(defaults, dest) == expected, dest
    with pytest.raises(SystemExit):  # a flag of train.py that means nothing here is not accepted
        parse_args(["--out", "p.npz", "--image-size", "32"])
