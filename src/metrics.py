"""Multi-label metrics. Labels (N samples x C classes): 1 positive, 0 negative, -1 un-annotated (left out
everywhere); scores are any reals. Every function takes ``(targets, scores)``; the paper's names keep their
signatures as aliases at the end.

AP of a class: the mean over its positives of precision at their rank; tied scores share the precision at
the tie group's last rank (= scikit-learn), so no result depends on sort order. Full labels: a class
without positives counts AP 0 (as the paper). Partial labels: a class without an annotated sample,
positive or negative is skipped and counted; ``mAP_weighted`` weights by positives.
Threshold / top-k metrics (percent, as ML-GCN / ASL): CP, CR per-class means (0 where nothing is predicted
/ no positive), OP, OR over all annotated entries, and their F1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

THRESHOLD_METRIC_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def _to_numpy(array, name: str) -> np.ndarray:
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        tensor = array.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            tensor = tensor.float()
        array = tensor.numpy()
    array = np.asarray(array)
    real = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if not (real or array.dtype == bool):
        raise ValueError(f"metrics: {name} must be a real-valued numeric array, got dtype {array.dtype}")
    return array


def check_finite_scores(scores, what: str,
                        hint: str = "scores must be finite - check the model outputs for overflow") -> None:
    """ValueError naming ``what``, the count and first index of NaN/inf values and ``hint``."""
    scores = _to_numpy(scores, what)
    # A float64 sum of finite values is finite unless it overflows; only then pay for the exact check.
    with np.errstate(over="ignore", invalid="ignore"):
        total = scores.sum(dtype=np.float64)
    if np.isfinite(total):
        return
    bad = ~np.isfinite(scores)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what} contains {int(bad.sum())} NaN/inf value(s) (first at index {first}: "
                         f"{scores[first]}); {hint}")


def _check_scores(scores: np.ndarray, name: str) -> np.ndarray:
    if scores.dtype == np.float16:
        scores = scores.astype(np.float32)  # float16 has no fast sort and overflows easily
    elif not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)  # integer / bool scores
    check_finite_scores(scores, f"metrics: {name}")
    return scores


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    bad = (labels != -1) & (labels != 0) & (labels != 1)  # also catches NaN; bool labels pass
    if bad.any():
        raise ValueError(f"metrics: {name} must contain only 1 (positive), 0 (negative) or -1 "
                         f"(un-annotated); found other values {np.unique(labels[bad])[:10].tolist()}")
    return labels.astype(np.int8, copy=False)


def _prepare(targets, scores, allow_1d: bool = False) -> tuple[np.ndarray, np.ndarray]:
    targets = _to_numpy(targets, "targets")
    scores = _to_numpy(scores, "predictions")
    if targets.shape != scores.shape:
        raise ValueError(f"metrics: targets shape {targets.shape} != predictions shape {scores.shape}; both "
                         "must be (num_samples, num_classes)")
    if allow_1d and targets.ndim == 1:
        targets, scores = targets[:, None], scores[:, None]
    if targets.ndim != 2:
        expected = "1-D (one class) or 2-D" if allow_1d else "2-D (num_samples, num_classes)"
        raise ValueError(f"metrics: expected {expected} arrays, got shape {targets.shape}")
    if targets.size == 0:
        raise ValueError(f"metrics: empty input of shape {targets.shape}; need >= 1 sample and >= 1 class")
    return _check_labels(targets, "targets"), _check_scores(scores, "predictions")


def _ap_sums(class_ids, scores, positive, num_classes: int):
    """Per class (C,): sum over its positives of tie-aware precision, #positives, #entries, of annotated
    entries as flat arrays. A per-class loop: the fastest measured (docs/benchmarks.md)."""
    n_entries = np.bincount(class_ids, minlength=num_classes)
    bounds = np.concatenate(([0], np.cumsum(n_entries)))
    narrow = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32  # int16 -> O(n) radix sort
    order = np.argsort(class_ids.astype(narrow, copy=False), kind="stable")
    scores, positive = scores[order], positive[order]
    precision_sum = np.zeros(num_classes)
    n_pos = np.zeros(num_classes, dtype=np.int64)
    for k in np.flatnonzero(n_entries):
        class_scores = scores[bounds[k] : bounds[k + 1]]
        pos_scores = np.sort(class_scores[positive[bounds[k] : bounds[k + 1]]])
        if pos_scores.size == 0:
            continue
        all_scores = np.sort(class_scores)
        # precision at a positive scored s: #positives with score >= s / #entries with score >= s
        pos_at_or_above = pos_scores.size - np.searchsorted(pos_scores, pos_scores, side="left")
        at_or_above = all_scores.size - np.searchsorted(all_scores, pos_scores, side="left")
        precision_sum[k] = np.sum(pos_at_or_above / at_or_above)
        n_pos[k] = pos_scores.size
    return precision_sum, n_pos, n_entries


def _ap_sums_dense(targets: np.ndarray, scores: np.ndarray):
    num_classes = targets.shape[1]
    flat = np.flatnonzero(targets != -1)  # row-major: class id = flat index mod C
    class_ids = (flat % num_classes).astype(np.int32)
    return _ap_sums(class_ids, scores.ravel()[flat], targets.ravel()[flat] == 1, num_classes)


def _full_label_ap(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    precision_sum, n_pos, _ = _ap_sums_dense(targets, scores)
    return precision_sum / np.maximum(n_pos, 1)


def average_precision_per_class(targets, scores) -> np.ndarray:
    """Non-interpolated, tie-aware AP of every class, float64 (C,) in [0, 1]; no positives: 0."""
    return _full_label_ap(*_prepare(targets, scores))


def mean_average_precision(targets, scores) -> float:
    """The paper's mAP: 100 x mean over ALL classes of :func:`average_precision_per_class`."""
    return 100.0 * float(_full_label_ap(*_prepare(targets, scores)).mean())


class PartialAP(NamedTuple):
    """Fields in the order of the paper's ``AP_partial`` tuple (its ``map_macro`` is ``mAP_weighted``)."""

    ap_per_class: np.ndarray  # float64 (C,) in [0, 1]; -1 for a skipped class
    mAP: float  # percent: plain mean AP over the kept classes (NaN when none is kept)
    mAP_weighted: float  # percent: mean AP weighted by each kept class's number of positives
    skipped_no_labels: int  # classes without any annotated sample
    skipped_no_negatives: int  # classes with annotated positives but no annotated negative
    skipped_no_positives: int  # classes with annotated samples but no positive

    @property
    def num_classes_skipped(self) -> int:
        return self.skipped_no_labels + self.skipped_no_negatives + self.skipped_no_positives


def _summarise_partial(precision_sum, n_pos, n_entries) -> PartialAP:
    n_neg = n_entries - n_pos
    no_labels = n_entries == 0
    no_pos = ~no_labels & (n_pos == 0)
    no_neg = ~no_labels & ~no_pos & (n_neg == 0)  # counted once, in the first rule that applies
    kept = ~(no_labels | no_pos | no_neg)
    ap = np.full(n_entries.shape, -1.0)
    ap[kept] = precision_sum[kept] / n_pos[kept]
    if kept.any():
        mean = 100.0 * float(ap[kept].mean())
        weighted = 100.0 * float(np.sum(ap[kept] * n_pos[kept]) / n_pos[kept].sum())
    else:
        mean = weighted = float("nan")
    return PartialAP(ap, mean, weighted, int(no_labels.sum()), int(no_neg.sum()), int(no_pos.sum()))


def partial_average_precision(targets, scores) -> PartialAP:
    """AP over annotated entries; a class without an annotated sample, positive or negative is skipped
    (AP -1) and counted once, in that order of checks."""
    return _summarise_partial(*_ap_sums_dense(*_prepare(targets, scores)))


def partial_average_precision_sparse(class_ids, labels, scores, *, num_classes: int) -> PartialAP:
    """:func:`partial_average_precision` of flat (n,) arrays, without the dense N x C matrix of huge,
    sparsely annotated label sets; class_ids in [0, num_classes), -1 labels dropped."""
    class_ids = _to_numpy(class_ids, "class_ids")
    labels = _to_numpy(labels, "labels")
    scores = _to_numpy(scores, "scores")
    if not (class_ids.ndim == 1 and class_ids.shape == scores.shape == labels.shape):
        raise ValueError("metrics: partial_average_precision_sparse needs 1-D class_ids, labels, scores of "
                         f"equal length; got shapes {class_ids.shape}, {labels.shape}, {scores.shape}")
    if int(num_classes) < 1 or class_ids.size == 0:
        raise ValueError(f"metrics: empty input (num_classes={num_classes}, {class_ids.size} entries)")
    if not np.issubdtype(class_ids.dtype, np.integer):
        raise ValueError(f"metrics: class_ids must be integers, got dtype {class_ids.dtype}")
    if class_ids.min() < 0 or class_ids.max() >= num_classes:
        raise ValueError(f"metrics: class_ids must lie in [0, {num_classes}); found range "
                         f"[{class_ids.min()}, {class_ids.max()}]")
    labels = _check_labels(labels, "labels")
    scores = _check_scores(scores, "scores")
    annotated = labels != -1
    if not annotated.all():
        class_ids, scores, labels = class_ids[annotated], scores[annotated], labels[annotated]
    class_ids = class_ids.astype(np.int32, copy=False)
    return _summarise_partial(*_ap_sums(class_ids, scores, labels == 1, int(num_classes)))


def _safe_ratio(numerator, denominator):
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _counts_to_metrics(targets: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    annotated = targets != -1
    positive = targets == 1
    true_pos = np.count_nonzero(predicted & positive, axis=0)
    n_predicted = np.count_nonzero(predicted & annotated, axis=0)
    n_ground_truth = np.count_nonzero(positive, axis=0)
    cp = 100.0 * float(_safe_ratio(true_pos, n_predicted).mean())
    cr = 100.0 * float(_safe_ratio(true_pos, n_ground_truth).mean())
    op = 100.0 * float(_safe_ratio(true_pos.sum(), n_predicted.sum()))
    or_ = 100.0 * float(_safe_ratio(true_pos.sum(), n_ground_truth.sum()))
    values = (cp, cr, _f1(cp, cr), op, or_, _f1(op, or_))
    return dict(zip(THRESHOLD_METRIC_KEYS, values, strict=True))


def threshold_metrics(targets, scores, *, threshold: float) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (percent) predicting positive where score >= threshold."""
    targets, scores = _prepare(targets, scores)
    if not np.isfinite(threshold):
        raise ValueError(f"metrics: threshold must be a finite number, got {threshold}")
    return _counts_to_metrics(targets, scores >= threshold)


def topk_metrics(targets, scores, *, k: int) -> dict[str, float]:
    """CP..OF1 (percent) predicting each sample's k best classes (and every score tied with the k-th)."""
    targets, scores = _prepare(targets, scores)
    num_classes = targets.shape[1]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= num_classes:
        raise ValueError(f"metrics: k must be an integer in [1, num_classes={num_classes}], got {k!r}")
    kth_largest = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    return _counts_to_metrics(targets, scores >= kth_largest)


# The paper's names and signatures (its src/helper_functions/helper_functions.py)
def average_precision(output, target):
    """Scores first, as the paper; a 1-D (N,) pair (one class) gives a float."""
    target_2d, output_2d = _prepare(target, output, allow_1d=True)
    ap = _full_label_ap(target_2d, output_2d)
    return float(ap[0]) if np.ndim(output) == 1 else ap


def mAP(targs, preds) -> float:
    return mean_average_precision(targs, preds)


def AP_partial(targs, preds) -> tuple:
    return tuple(partial_average_precision(targs, preds))


def mAP_partial(targs, preds) -> float:
    return partial_average_precision(targs, preds).mAP
