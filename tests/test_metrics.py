"""Tests for src.metrics: hand-computed AP, scikit-learn equality, partial labels, threshold metrics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score

from src.metrics import (
    AP_partial,
    AP_partial_sparse,
    average_precision,
    mAP,
    mAP_partial,
    threshold_metrics,
    topk_metrics,
)

# ------------------------------------------------------------------------------------------------
# Hand-computed AP
# ------------------------------------------------------------------------------------------------


def test_ap_hand_computed_without_ties():
    # ranks 1..4 labels 1,0,1,0 -> precisions at positives 1/1 and 2/3 -> AP = 5/6
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # positives at ranks 2,3,4 -> (1/2 + 2/3 + 3/4) / 3 = 23/36
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 1, 1])) == pytest.approx(23 / 36)


def test_ap_ties_use_precision_at_end_of_tie_group():
    # scores 0.9 | 0.5 0.5 | 0.1 with labels 0 | 1 0 | 1: the tied pair occupies ranks 2-3, so its
    # positive gets precision 1/3 (not 1/2 as if it were ranked first); the last positive 2/4.
    scores, labels = np.array([0.9, 0.5, 0.5, 0.1]), np.array([0, 1, 0, 1])
    assert average_precision(scores, labels) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert average_precision(scores[[0, 2, 1, 3]], labels[[0, 2, 1, 3]]) == pytest.approx(5 / 12)
    # everything tied: every positive sees 2 positives among 4 -> 0.5
    assert average_precision(np.full(4, 0.3), np.array([1, 0, 0, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_zero_ties_with_positive_zero(dtype):
    # -0.0 == 0.0, so the two form one tie group at ranks 1-2: precision 1/2 for the positive.
    scores = np.array([0.0, -0.0, -1.0], dtype=dtype)
    assert average_precision(scores, np.array([0, 1, 0])) == pytest.approx(0.5)
    assert average_precision(scores, np.array([1, 0, 0])) == pytest.approx(0.5)


def test_average_precision_ignores_unannotated_and_returns_per_class_array():
    # the -1 at score 0.8 is dropped: remaining (0.9,1) (0.7,0) (0.6,1) -> (1 + 2/3) / 2
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([[1, 0], [-1, 0], [0, 0], [1, 0]])
    ap = average_precision(scores, labels)
    assert ap.shape == (2,)
    np.testing.assert_allclose(ap, [5 / 6, 0.0])  # class without positives -> 0 (as the paper's code)
    assert mAP(labels, scores) == pytest.approx(100 * (5 / 6 + 0) / 2)


def test_ap_does_not_depend_on_row_order_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (60, 4)).astype(np.float64)
    labels = (rng.random((60, 4)) < 0.4).astype(int)
    reference = average_precision(scores, labels)
    for _ in range(5):
        perm = rng.permutation(60)
        permuted = average_precision(scores[perm], labels[perm])
        np.testing.assert_allclose(permuted, reference, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Equality with scikit-learn (covers every internal sort path)
# ------------------------------------------------------------------------------------------------


def _random_scores(rng, shape, kind):
    if kind == "float64":  # not representable in float32 -> argsort / column-sort paths
        return rng.random(shape)
    if kind == "float32":  # packed-key path
        return rng.random(shape).astype(np.float32)
    if kind == "tied_float64":  # few distinct values, float32-exact -> packed path with many ties
        return rng.integers(-3, 4, shape) * 0.25
    if kind == "tied_not_float32":  # ties in float64 values float32 cannot hold -> argsort / column paths
        return rng.integers(-2, 3, shape) / 3.0
    if kind == "wide_float32":  # both signs, magnitudes 1e-30..1e30: checks the float -> key mapping
        return (rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)).astype(np.float32)
    if kind == "tied_negative_float32":
        return (rng.integers(-4, 2, shape) * 0.5).astype(np.float32)
    raise AssertionError(kind)


def _sklearn_partial_ap(labels, scores):
    """Per-class sklearn AP on annotated entries, -1 where AP_partial excludes the class."""
    ap = np.full(labels.shape[1], -1.0)
    for k in range(labels.shape[1]):
        annotated = labels[:, k] != -1
        y = labels[annotated, k]
        if y.size and y.any() and not y.all():
            ap[k] = average_precision_score(y, scores[annotated, k])
    return ap


@pytest.mark.parametrize(
    "kind", ["float64", "float32", "tied_float64", "tied_not_float32", "tied_negative_float32"]
)
@pytest.mark.parametrize("unannotated_fraction", [0.0, 0.3, 0.9])
def test_partial_ap_equals_sklearn_on_annotated_subset(kind, unannotated_fraction):
    rng = np.random.default_rng([len(kind), int(10 * unannotated_fraction)])
    labels = (rng.random((150, 6)) < 0.35).astype(np.int64)
    labels[rng.random(labels.shape) < unannotated_fraction] = -1
    scores = _random_scores(rng, labels.shape, kind)
    ap, map_, *_ = AP_partial(labels, scores)
    expected = _sklearn_partial_ap(labels, scores)
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    assert map_ == pytest.approx(100 * expected[expected != -1].mean())
    assert mAP_partial(labels, scores) == pytest.approx(map_)


@pytest.mark.parametrize("kind", ["float64", "float32", "tied_float64", "tied_not_float32", "wide_float32"])
def test_full_map_equals_sklearn(kind):
    rng = np.random.default_rng(1)
    labels = (rng.random((200, 5)) < 0.3).astype(np.int8)
    scores = _random_scores(rng, labels.shape, kind)
    expected = [average_precision_score(labels[:, k], scores[:, k]) for k in range(5)]
    np.testing.assert_allclose(average_precision(scores, labels), expected, rtol=0, atol=1e-12)
    assert mAP(labels, scores) == pytest.approx(100 * np.mean(expected))


def test_partial_ap_equals_full_ap_of_each_annotated_subset():
    rng = np.random.default_rng(2)
    labels = (rng.random((120, 5)) < 0.4).astype(np.int64)
    labels[rng.random(labels.shape) < 0.5] = -1
    scores = rng.random(labels.shape)
    ap = AP_partial(labels, scores)[0]
    for k in range(5):
        annotated = labels[:, k] != -1
        full = mAP(labels[annotated, k : k + 1], scores[annotated, k : k + 1]) / 100
        assert ap[k] == pytest.approx(full)


def test_sparse_entry_point_matches_dense():
    rng = np.random.default_rng(3)
    labels = (rng.random((80, 7)) < 0.3).astype(np.int8)
    labels[rng.random(labels.shape) < 0.6] = -1
    labels[:, 0] = -1  # a class without annotations
    scores = rng.random(labels.shape).astype(np.float32)
    rows, cols = np.nonzero(labels != -1)
    sparse = AP_partial_sparse(cols, scores[rows, cols], labels[rows, cols], num_classes=7)
    dense = AP_partial(labels, scores)
    np.testing.assert_array_equal(sparse[0], dense[0])
    assert sparse[1:] == pytest.approx(dense[1:])
    # -1 entries passed to the sparse entry point are dropped, not counted
    with_unannotated = AP_partial_sparse(np.arange(7).repeat(80), scores.T.ravel(), labels.T.ravel(), 7)
    np.testing.assert_array_equal(with_unannotated[0], dense[0])


def test_torch_tensors_are_accepted():
    rng = np.random.default_rng(4)
    labels = (rng.random((30, 3)) < 0.5).astype(np.float32)
    scores = rng.random((30, 3)).astype(np.float32)
    expected = mAP(labels, scores)
    assert mAP(torch.from_numpy(labels), torch.from_numpy(scores)) == pytest.approx(expected)
    bf16 = torch.from_numpy(scores).to(torch.bfloat16)
    assert mAP(torch.from_numpy(labels), bf16) == pytest.approx(mAP(labels, bf16.float().numpy()))


# ------------------------------------------------------------------------------------------------
# Exclusion counting and macro weighting
# ------------------------------------------------------------------------------------------------


def test_exclusions_counts_and_macro_weighting():
    scores = np.tile(np.array([[0.9], [0.8], [0.7], [0.6]]), (1, 5))
    labels = np.array(
        [
            # no labels, no positive, no negative, AP 5/6 (2 pos), AP 23/36 (3 pos)
            [-1, 0, 1, 1, 0],
            [-1, -1, 1, 0, 1],
            [-1, 0, -1, 1, 1],
            [-1, 0, 1, 0, 1],
        ]
    )
    ap, map_, map_macro, n_no_labels, n_no_neg, n_no_pos = AP_partial(labels, scores)
    np.testing.assert_allclose(ap, [-1, -1, -1, 5 / 6, 23 / 36])
    assert (n_no_labels, n_no_neg, n_no_pos) == (1, 1, 1)
    assert map_ == pytest.approx(100 * (5 / 6 + 23 / 36) / 2)  # 73.61
    assert map_macro == pytest.approx(100 * (2 * 5 / 6 + 3 * 23 / 36) / 5)  # 71.67


def test_all_classes_excluded_gives_nan():
    result = AP_partial(np.array([[1, -1]]), np.array([[0.2, 0.3]]))
    ap, map_, map_macro, n_no_labels, n_no_neg, n_no_pos = result
    np.testing.assert_array_equal(ap, [-1, -1])
    assert np.isnan(map_) and np.isnan(map_macro)
    assert (n_no_labels, n_no_neg, n_no_pos) == (1, 1, 0)


# ------------------------------------------------------------------------------------------------
# Threshold and top-k metrics
# ------------------------------------------------------------------------------------------------

HAND_LABELS = np.array([[1, 0, -1], [0, 1, 1], [1, -1, 1]])
HAND_SCORES = np.array([[0.9, 0.6, 0.8], [0.2, 0.4, 0.7], [0.3, 0.9, 0.1]])


def test_threshold_metrics_hand_computed():
    # predicted (>= 0.5), counting annotated entries only:
    # class 0: TP 1, predicted 1, positives 2 -> P 1, R 1/2
    # class 1: TP 0, predicted 1 (row 2 is un-annotated), positives 1 -> P 0, R 0
    # class 2: TP 1, predicted 1 (row 0 is un-annotated), positives 2 -> P 1, R 1/2
    result = threshold_metrics(HAND_LABELS, HAND_SCORES, threshold=0.5)
    cp, cr, op, or_ = 2 / 3, 1 / 3, 2 / 3, 2 / 5
    expected = {"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr), "OP": op, "OR": or_, "OF1": 0.5}
    assert result == pytest.approx({k: 100 * v for k, v in expected.items()})


def test_topk_metrics_hand_computed():
    # k=1 picks class 0, 2, 1 for rows 0, 1, 2; row 2's pick is un-annotated and not counted.
    # class 0: TP 1, pred 1, pos 2; class 1: no prediction -> precision 0, R 0; class 2: TP 1, pred 1, pos 2
    result = topk_metrics(HAND_LABELS, HAND_SCORES, k=1)
    cp, cr, op, or_ = 2 / 3, 1 / 3, 1.0, 2 / 5
    expected = {"CP": cp, "CR": cr, "CF1": 4 / 9, "OP": op, "OR": or_, "OF1": 2 * op * or_ / (op + or_)}
    assert result == pytest.approx({k: 100 * v for k, v in expected.items()})


def test_topk_includes_every_score_tied_with_the_kth():
    labels, scores = np.array([[1, 0, 1]]), np.array([[0.5, 0.5, 0.1]])
    result = topk_metrics(labels, scores, k=1)  # both 0.5 are predicted: TP 1 of 2 predictions
    assert result["OP"] == pytest.approx(50.0) and result["OR"] == pytest.approx(50.0)


def test_threshold_metrics_match_sklearn_macro_micro():
    rng = np.random.default_rng(5)
    labels = (rng.random((100, 6)) < 0.3).astype(int)
    labels[:, 5] = 0  # a class without positives: recall 0 like sklearn's zero_division=0
    scores = rng.random(labels.shape)
    predicted = (scores >= 0.7).astype(int)
    result = threshold_metrics(labels, scores, threshold=0.7)
    for key, average in (("C", "macro"), ("O", "micro")):
        precision = precision_score(labels, predicted, average=average, zero_division=0)
        recall = recall_score(labels, predicted, average=average, zero_division=0)
        assert result[key + "P"] == pytest.approx(100 * precision)
        assert result[key + "R"] == pytest.approx(100 * recall)
        assert result[key + "F1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

GOOD_LABELS = np.array([[1, 0], [0, 1]])
GOOD_SCORES = np.array([[0.9, 0.1], [0.2, 0.8]])
ALL_FUNCTIONS = [
    lambda t, p: mAP(t, p),
    lambda t, p: AP_partial(t, p),
    lambda t, p: mAP_partial(t, p),
    lambda t, p: average_precision(p, t),
    lambda t, p: threshold_metrics(t, p),
    lambda t, p: topk_metrics(t, p, k=1),
]


@pytest.mark.parametrize("function", ALL_FUNCTIONS)
@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        (GOOD_LABELS, np.ones((2, 3)), r"targets shape \(2, 2\) != predictions shape \(2, 3\)"),
        (GOOD_LABELS, np.array([[0.9, np.nan], [0.2, 0.8]]), r"1 NaN/inf value\(s\) \(first at index \(0, 1"),
        (GOOD_LABELS, np.array([[0.9, 0.1], [-np.inf, 0.8]]), r"NaN/inf value\(s\) \(first at index \(1, 0"),
        (np.array([[1, 2], [0, -1]]), GOOD_SCORES, r"only 1 \(positive\), 0 \(negative\) or -1.*\[2\]"),
        (np.array([[1, 0.5], [0, -1]]), GOOD_SCORES, r"found other values \[0.5\]"),
        (np.array([[1, np.nan], [0, -1]]), GOOD_SCORES, r"found other values \[nan\]"),
        (np.zeros((0, 2)), np.zeros((0, 2)), r"empty input of shape \(0, 2\)"),
        (np.zeros((3, 0)), np.zeros((3, 0)), r"empty input of shape \(3, 0\)"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), r"got shape \(2, 2, 2\)"),
        (GOOD_LABELS, np.array([["a", "b"], ["c", "d"]]), r"predictions must be a real-valued numeric array"),
    ],
)
def test_bad_input_raises_value_error(function, labels, scores, message):
    with pytest.raises(ValueError, match=message):
        function(labels, scores)


@pytest.mark.parametrize("function", [mAP, AP_partial, mAP_partial, threshold_metrics, topk_metrics])
def test_one_dimensional_input_rejected_where_2d_required(function):
    message = r"expected 2-D \(num_samples, num_classes\) arrays, got shape \(2,\)"
    with pytest.raises(ValueError, match=message):
        function(np.array([1, 0]), np.array([0.3, 0.2]))


def test_finite_scores_whose_sum_overflows_are_accepted():
    scores = np.array([[1e308, -1e308], [1e308, 1e308]])  # sum overflows to inf; values are finite
    # class 0: one positive tied with one negative at the top -> 1/2; class 1: positive ranked first -> 1
    np.testing.assert_allclose(average_precision(scores, np.array([[1, 0], [0, 1]])), [0.5, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"k must be an integer in \[1, num_classes=2\], got 0"),
        ({"k": 3}, "got 3"),
        ({"k": 1.5}, "got 1.5"),
        ({"k": True}, "got True"),
    ],
)
def test_topk_rejects_bad_k(kwargs, message):
    with pytest.raises(ValueError, match=message):
        topk_metrics(GOOD_LABELS, GOOD_SCORES, **kwargs)


def test_threshold_rejects_nan_threshold():
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        threshold_metrics(GOOD_LABELS, GOOD_SCORES, threshold=float("nan"))


@pytest.mark.parametrize(
    ("class_ids", "scores", "labels", "message"),
    [
        ([0, 1], [0.5], [1, 0], r"equal length; got shapes \(2,\), \(1,\), \(2,\)"),
        ([0, 5], [0.5, 0.4], [1, 0], r"class_ids must lie in \[0, 3\); found range \[0, 5\]"),
        ([0.0, 1.0], [0.5, 0.4], [1, 0], "class_ids must be integers"),
        ([], [], [], r"empty input"),
        ([0, 1], [0.5, np.inf], [1, 0], r"scores contains 1 NaN/inf"),
        ([0, 1], [0.5, 0.4], [1, 3], r"labels must contain only"),
    ],
)
def test_sparse_bad_input(class_ids, scores, labels, message):
    with pytest.raises(ValueError, match=message):
        AP_partial_sparse(np.array(class_ids), np.array(scores), np.array(labels), num_classes=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("unannotated_rows", [0, 2, 10])  # column path, column path, gather path
def test_equal_scores_in_neighbouring_classes_stay_separate_tie_groups(dtype, unannotated_rows):
    # Each class is one tie group of 3 annotated samples with 1 positive -> AP 1/3 for both; merging the
    # groups across the class boundary would give other values. 0.3 is not exact in float32, so the
    # float64 case exercises the column / argsort paths, the float32 case the packed-key path.
    labels = np.vstack([[[1, 0], [0, 0], [0, 1]], np.full((unannotated_rows, 2), -1)])
    scores = np.full(labels.shape, 0.3, dtype=dtype)
    np.testing.assert_allclose(AP_partial(labels, scores)[0], [1 / 3, 1 / 3])
