"""Benchmark src.metrics AP against a per-class Python loop and scikit-learn, asserting equal values.

Scales (random data, scores correlated with labels so AP is non-trivial; float32 scores contain ties):
- COCO val: 40,137 x 80, fully annotated, ~2.9 positives per image.
- OpenImages test: 125,000 x 9,605, ~1.5% of entries annotated (~18M), ~35% of them positive; classes
  0-9 get no positive, 10-19 no negative, 20-29 no annotation, to exercise the exclusion rules.
  Timed through the sparse entry point (``partial_average_precision_sparse``) and the dense one
  (``partial_average_precision`` on a 4.8 GB float32 score matrix + 1.2 GB int8 labels; skip with
  --skip-dense-openimages).

References:
- loop: per-class Python loop over dense columns (the paper code's structure), tie-aware via
  searchsorted, an independent formulation of the same definition;
- sklearn: ``average_precision_score`` per class on the annotated entries.
At OpenImages scale both run on an evenly spaced subset of classes and their time is extrapolated
linearly to all classes (marked "extrapolated"); values are compared on that subset, and the whole
AP vector is compared with a per-class loop over the sparse entries.

Run: ``.venv/bin/python bench/bench_map.py`` (about 1-2 minutes on 2 CPU cores, ~9 GB RAM peak).
``main(argv)`` returns the table rows (dicts) for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.metrics import (  # noqa: E402
    mean_average_precision,
    partial_average_precision,
    partial_average_precision_sparse,
)

ATOL = 1e-9  # AP values are sums of exact ratios; implementations differ only by float rounding


def _timed(function, *args, repeats: int = 1):
    """(best wall time over repeats, result of the last call)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def reference_ap_one_class(labels: np.ndarray, scores: np.ndarray) -> float:
    """Tie-aware AP of one class: mean over positives of #pos(score >= s) / #all(score >= s); -1 if the
    class has no positive or no negative (the partial-label exclusion rule)."""
    positive_scores = np.sort(scores[labels == 1])
    if positive_scores.size == 0 or positive_scores.size == scores.size:
        return -1.0
    all_sorted = np.sort(scores)
    n_at_or_above = all_sorted.size - np.searchsorted(all_sorted, positive_scores, side="left")
    pos_at_or_above = positive_scores.size - np.searchsorted(positive_scores, positive_scores, side="left")
    return float(np.mean(pos_at_or_above / n_at_or_above))


def reference_loop_dense(targets: np.ndarray, scores: np.ndarray, classes) -> np.ndarray:
    """Per-class loop over dense columns, as the paper's code does."""
    ap = np.empty(len(classes))
    for i, k in enumerate(classes):
        column_labels = targets[:, k]
        annotated = column_labels != -1
        ap[i] = reference_ap_one_class(column_labels[annotated], scores[annotated, k])
    return ap


def sklearn_ap(targets: np.ndarray, scores: np.ndarray, classes) -> np.ndarray:
    from sklearn.metrics import average_precision_score

    ap = np.empty(len(classes))
    for i, k in enumerate(classes):
        annotated = targets[:, k] != -1
        ap[i] = average_precision_score(targets[annotated, k], scores[annotated, k])
    return ap


def _scores_for(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 sigmoid scores, higher on positives (float32 rounding creates realistic ties)."""
    logits = rng.standard_normal(labels.shape, dtype=np.float32) + 1.5 * labels.astype(np.float32)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def _assert_close(name: str, ours: np.ndarray, reference: np.ndarray) -> float:
    error = float(np.max(np.abs(ours - reference)))
    if error > ATOL:
        raise AssertionError(f"{name}: max |AP difference| {error:.3g} > {ATOL}")
    return error


def bench_coco(rng: np.random.Generator, repeats: int) -> list[dict]:
    num_samples, num_classes = 40_137, 80
    targets = (rng.random((num_samples, num_classes)) < 2.9 / num_classes).astype(np.int8)
    scores = _scores_for(targets, rng)
    ours_s, ours_map = _timed(mean_average_precision, targets, scores, repeats=repeats)
    classes = range(num_classes)
    loop_s, loop_ap = _timed(reference_loop_dense, targets, scores, classes)
    sk_s, sk_ap = _timed(sklearn_ap, targets, scores, classes)
    # every class has positives and negatives here, so no class is skipped
    ours_ap = partial_average_precision(targets, scores).ap_per_class
    err = max(_assert_close("coco loop", ours_ap, loop_ap), _assert_close("coco sklearn", ours_ap, sk_ap))
    if abs(ours_map - 100 * loop_ap.mean()) > 1e-6:
        raise AssertionError(f"coco: mAP {ours_map} != loop {100 * loop_ap.mean()}")
    scale = f"COCO val {num_samples}x{num_classes}"
    return [
        _row(scale, "src.metrics.mean_average_precision", ours_s, ours_s, err,
             f"best of {repeats}; mAP={ours_map:.3f}"),
        _row(scale, "per-class loop", loop_s, ours_s, err, "all classes"),
        _row(scale, "sklearn average_precision_score", sk_s, ours_s, err, "all classes"),
    ]


def _openimages_entries(rng, num_samples, num_classes, annotated_fraction):
    """Row-major flat indices of a Bernoulli(annotated_fraction) mask, built from geometric gaps so the
    dense mask is never materialised; plus labels, scores and the degenerate classes."""
    total = num_samples * num_classes
    expected = int(total * annotated_fraction)
    gaps = rng.geometric(annotated_fraction, size=int(expected * 1.01) + 1000)
    flat = np.cumsum(gaps, dtype=np.int64) - 1
    flat = flat[flat < total]
    class_ids = (flat % num_classes).astype(np.int32)
    keep = (class_ids < 20) | (class_ids >= 30)  # classes 20-29: no annotated sample
    flat, class_ids = flat[keep], class_ids[keep]
    labels = (rng.random(flat.size) < 0.35).astype(np.int8)
    labels[class_ids < 10] = 0  # no positive
    labels[(class_ids >= 10) & (class_ids < 20)] = 1  # no negative
    return flat, class_ids, labels, _scores_for(labels, rng)


def _loop_over_sparse(class_ids, scores, labels, num_classes) -> np.ndarray:
    order = np.argsort(class_ids, kind="stable")
    bounds = np.searchsorted(class_ids[order], np.arange(num_classes + 1))
    ap = np.full(num_classes, -1.0)
    for k in range(num_classes):
        members = order[bounds[k] : bounds[k + 1]]
        if members.size:
            ap[k] = reference_ap_one_class(labels[members], scores[members])
    return ap


def bench_openimages(rng, dense: bool, loop_classes: int, sklearn_classes: int) -> list[dict]:
    num_samples, num_classes, fraction = 125_000, 9_605, 0.015
    scale = f"OpenImages test {num_samples}x{num_classes}"
    flat, class_ids, labels, scores = _openimages_entries(rng, num_samples, num_classes, fraction)
    sparse_s, result = _timed(lambda: partial_average_precision_sparse(class_ids, labels, scores,
                                                                       num_classes=num_classes))
    ap = result.ap_per_class
    counts = (result.skipped_no_labels, result.skipped_no_negatives, result.skipped_no_positives)
    if counts != (10, 10, 10):
        raise AssertionError(f"openimages exclusion counts {counts} != 10 each")
    loop_ap = _loop_over_sparse(class_ids, scores, labels, num_classes)
    err = _assert_close("openimages sparse loop", ap, loop_ap)
    note = f"{flat.size / 1e6:.1f}M annotated entries; mAP={result.mAP:.3f}"
    rows = [_row(scale, "src.metrics.partial_average_precision_sparse", sparse_s, sparse_s, err, note)]
    if not dense:
        return rows

    targets = np.full((num_samples, num_classes), -1, dtype=np.int8)
    targets.ravel()[flat] = labels
    dense_scores = np.full((num_samples, num_classes), 0.5, dtype=np.float32)  # un-annotated: never read
    dense_scores.ravel()[flat] = scores
    del flat
    dense_s, dense_result = _timed(partial_average_precision, targets, dense_scores)
    err = max(err, _assert_close("openimages dense vs sparse", dense_result.ap_per_class, ap))
    rows.append(_row(scale, "src.metrics.partial_average_precision (dense)", dense_s, dense_s, err,
                     "same values as sparse"))

    subset = np.linspace(30, num_classes - 1, loop_classes).astype(int)  # classes with valid AP
    loop_s, loop_ap = _timed(reference_loop_dense, targets, dense_scores, subset)
    err = max(err, _assert_close("openimages loop", ap[subset], loop_ap))
    loop_total = loop_s * num_classes / len(subset)
    rows.append(_row(scale, "per-class loop", loop_total, dense_s, err,
                     f"extrapolated from {len(subset)} classes ({loop_s:.1f}s)"))
    subset = subset[:: max(1, len(subset) // sklearn_classes)][:sklearn_classes]
    sk_s, sk_ap = _timed(sklearn_ap, targets, dense_scores, subset)
    err = max(err, _assert_close("openimages sklearn", ap[subset], sk_ap))
    rows.append(_row(scale, "sklearn average_precision_score", sk_s * num_classes / len(subset), dense_s,
                     err, f"extrapolated from {len(subset)} classes ({sk_s:.1f}s)"))
    return rows


def _row(scale, implementation, seconds, ours_seconds, max_error, note) -> dict:
    return {
        "benchmark": "map",
        "scale": scale,
        "implementation": implementation,
        "seconds": seconds,
        "slowdown_vs_ours": seconds / ours_seconds,
        "max_abs_ap_diff": max_error,
        "note": note,
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'scale':30} {'implementation':46} {'seconds':>9} {'x ours':>7} {'max|dAP|':>9}  note")
    for r in rows:
        print(f"{r['scale']:30} {r['implementation']:46} {r['seconds']:9.3f} {r['slowdown_vs_ours']:7.1f} "
              f"{r['max_abs_ap_diff']:9.1e}  {r['note']}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats at COCO scale (best kept)")
    parser.add_argument("--skip-openimages", action="store_true")
    parser.add_argument("--skip-dense-openimages", action="store_true",
                        help="skip the 6 GB dense OpenImages matrices (sparse entry point only)")
    parser.add_argument("--loop-classes", type=int, default=300)
    parser.add_argument("--sklearn-classes", type=int, default=300)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = bench_coco(rng, args.repeats)
    if not args.skip_openimages:
        rows += bench_openimages(rng, not args.skip_dense_openimages, args.loop_classes, args.sklearn_classes)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
