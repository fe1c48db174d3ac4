"""Tests for src.metrics: hand-computed AP, scikit-learn equality, partial labels, threshold metrics, and
the paper's names (thin aliases, also importable from src.helper_functions.helper_functions)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score

from src.metrics import (
    THRESHOLD_METRIC_KEYS,
    AP_partial,
    PartialAP,
    average_precision,
    average_precision_per_class,
    check_finite_scores,
    mAP,
    mAP_partial,
    mean_average_precision,
    partial_average_precision,
    partial_average_precision_sparse,
    threshold_metrics,
    topk_metrics,
)


def one_class_ap(labels, scores) -> float:
    """AP of a single class given as 1-D arrays (labels first, like every function of src.metrics)."""
    return float(average_precision_per_class(np.asarray(labels)[:, None], np.asarray(scores)[:, None])[0])

# ------------------------------------------------------------------------------------------------
# Hand-computed AP
# ------------------------------------------------------------------------------------------------


def test_ap_hand_computed_without_ties():
    # ranks 1..4 labels 1,0,1,0 -> precisions at positives 1/1 and 2/3 -> AP = 5/6
    assert one_class_ap([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(5 / 6)
    # positives at ranks 2,3,4 -> (1/2 + 2/3 + 3/4) / 3 = 23/36
    assert one_class_ap([0, 1, 1, 1], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(23 / 36)


def test_ap_ties_use_precision_at_end_of_tie_group():
    # scores 0.9 | 0.5 0.5 | 0.1 with labels 0 | 1 0 | 1: the tied pair occupies ranks 2-3, so its
    # positive gets precision 1/3 (not 1/2 as if it were ranked first); the last positive 2/4.
    scores, labels = np.array([0.9, 0.5, 0.5, 0.1]), np.array([0, 1, 0, 1])
    assert one_class_ap(labels, scores) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert one_class_ap(labels[[0, 2, 1, 3]], scores[[0, 2, 1, 3]]) == pytest.approx(5 / 12)
    # everything tied: every positive sees 2 positives among 4 -> 0.5
    assert one_class_ap([1, 0, 0, 1], np.full(4, 0.3)) == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_zero_ties_with_positive_zero(dtype):
    # -0.0 == 0.0, so the two form one tie group at ranks 1-2: precision 1/2 for the positive.
    scores = np.array([0.0, -0.0, -1.0], dtype=dtype)
    assert one_class_ap([0, 1, 0], scores) == pytest.approx(0.5)
    assert one_class_ap([1, 0, 0], scores) == pytest.approx(0.5)


def test_average_precision_ignores_unannotated_and_returns_per_class_array():
    # the -1 at score 0.8 is dropped: remaining (0.9,1) (0.7,0) (0.6,1) -> (1 + 2/3) / 2
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([[1, 0], [-1, 0], [0, 0], [1, 0]])
    ap = average_precision_per_class(labels, scores)
    assert ap.dtype == np.float64
    np.testing.assert_allclose(ap, [5 / 6, 0.0], rtol=0, atol=1e-15)  # no positives -> 0 (paper's code)
    assert mean_average_precision(labels, scores) == pytest.approx(100 * (5 / 6 + 0) / 2)


def test_ap_does_not_depend_on_row_order_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, (60, 4)).astype(np.float64)
    labels = (rng.random((60, 4)) < 0.4).astype(int)
    reference = average_precision_per_class(labels, scores)
    for _ in range(5):
        perm = rng.permutation(60)
        permuted = average_precision_per_class(labels[perm], scores[perm])
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
    """Per-class sklearn AP on annotated entries, -1 where partial_average_precision skips the class."""
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
    result = partial_average_precision(labels, scores)
    expected = _sklearn_partial_ap(labels, scores)
    np.testing.assert_allclose(result.ap_per_class, expected, rtol=0, atol=1e-12)
    assert result.mAP == pytest.approx(100 * expected[expected != -1].mean())


@pytest.mark.parametrize("kind", ["float64", "float32", "tied_float64", "tied_not_float32", "wide_float32"])
def test_full_map_equals_sklearn(kind):
    rng = np.random.default_rng(1)
    labels = (rng.random((200, 5)) < 0.3).astype(np.int8)
    scores = _random_scores(rng, labels.shape, kind)
    expected = [average_precision_score(labels[:, k], scores[:, k]) for k in range(5)]
    np.testing.assert_allclose(average_precision_per_class(labels, scores), expected, rtol=0, atol=1e-12)
    assert mean_average_precision(labels, scores) == pytest.approx(100 * np.mean(expected))


def test_partial_ap_equals_full_ap_of_each_annotated_subset():
    rng = np.random.default_rng(2)
    labels = (rng.random((120, 5)) < 0.4).astype(np.int64)
    labels[rng.random(labels.shape) < 0.5] = -1
    scores = rng.random(labels.shape)
    ap = partial_average_precision(labels, scores).ap_per_class
    for k in range(5):
        annotated = labels[:, k] != -1
        full = mean_average_precision(labels[annotated, k : k + 1], scores[annotated, k : k + 1]) / 100
        assert ap[k] == pytest.approx(full)


def test_sparse_entry_point_matches_dense():
    rng = np.random.default_rng(3)
    labels = (rng.random((80, 7)) < 0.3).astype(np.int8)
    labels[rng.random(labels.shape) < 0.6] = -1
    labels[:, 0] = -1  # a class without annotations
    scores = rng.random(labels.shape).astype(np.float32)
    rows, cols = np.nonzero(labels != -1)
    sparse = partial_average_precision_sparse(cols, labels[rows, cols], scores[rows, cols], num_classes=7)
    dense = partial_average_precision(labels, scores)
    np.testing.assert_array_equal(sparse.ap_per_class, dense.ap_per_class)
    assert sparse[1:] == pytest.approx(dense[1:])
    assert dense.skipped_no_labels >= 1  # class 0
    # -1 entries passed to the sparse entry point are dropped, not counted
    with_unannotated = partial_average_precision_sparse(np.arange(7).repeat(80), labels.T.ravel(),
                                                        scores.T.ravel(), num_classes=7)
    np.testing.assert_array_equal(with_unannotated.ap_per_class, dense.ap_per_class)
    assert with_unannotated[1:] == pytest.approx(dense[1:])


def test_torch_tensors_are_accepted():
    rng = np.random.default_rng(4)
    labels = (rng.random((30, 3)) < 0.5).astype(np.float32)
    scores = rng.random((30, 3)).astype(np.float32)
    expected = mean_average_precision(labels, scores)
    torch_labels = torch.from_numpy(labels)
    assert mean_average_precision(torch_labels, torch.from_numpy(scores)) == pytest.approx(expected)
    bf16 = torch.from_numpy(scores).to(torch.bfloat16)
    assert mean_average_precision(torch.from_numpy(labels), bf16) == pytest.approx(
        mean_average_precision(labels, bf16.float().numpy()))


# ------------------------------------------------------------------------------------------------
# Exclusion counting and positives-weighted mean
# ------------------------------------------------------------------------------------------------


def test_exclusion_counts_and_positives_weighted_mean():
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
    result = partial_average_precision(labels, scores)
    np.testing.assert_allclose(result.ap_per_class, [-1, -1, -1, 5 / 6, 23 / 36])
    assert (result.skipped_no_labels, result.skipped_no_negatives, result.skipped_no_positives) == (1, 1, 1)
    assert result.num_classes_skipped == 3
    assert result.mAP == pytest.approx(100 * (5 / 6 + 23 / 36) / 2)  # 73.61
    assert result.mAP_weighted == pytest.approx(100 * (2 * 5 / 6 + 3 * 23 / 36) / 5)  # 71.67


def test_all_classes_excluded_gives_nan():
    result = partial_average_precision(np.array([[1, -1]]), np.array([[0.2, 0.3]]))
    np.testing.assert_array_equal(result.ap_per_class, [-1, -1])
    assert np.isnan(result.mAP) and np.isnan(result.mAP_weighted)
    assert (result.skipped_no_labels, result.skipped_no_negatives, result.skipped_no_positives) == (1, 1, 0)


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
    lambda t, p: average_precision_per_class(t, p),
    lambda t, p: mean_average_precision(t, p),
    lambda t, p: partial_average_precision(t, p),
    lambda t, p: threshold_metrics(t, p, threshold=0.5),
    lambda t, p: topk_metrics(t, p, k=1),
    lambda t, p: mAP(t, p),
    lambda t, p: AP_partial(t, p),
    lambda t, p: mAP_partial(t, p),
    lambda t, p: average_precision(p, t),
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


@pytest.mark.parametrize("function", ALL_FUNCTIONS[:-1])  # average_precision (paper) accepts one class
def test_one_dimensional_input_rejected_where_2d_required(function):
    message = r"expected 2-D \(num_samples, num_classes\) arrays, got shape \(2,\)"
    with pytest.raises(ValueError, match=message):
        function(np.array([1, 0]), np.array([0.3, 0.2]))


def test_finite_scores_whose_sum_overflows_are_accepted():
    scores = np.array([[1e308, -1e308], [1e308, 1e308]])  # sum overflows to inf; values are finite
    # class 0: one positive tied with one negative at the top -> 1/2; class 1: positive ranked first -> 1
    np.testing.assert_allclose(average_precision_per_class(np.array([[1, 0], [0, 1]]), scores), [0.5, 1.0])


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
        ([0, 1], [0.5], [1, 0], r"equal length; got shapes \(2,\), \(2,\), \(1,\)"),
        ([0, 5], [0.5, 0.4], [1, 0], r"class_ids must lie in \[0, 3\); found range \[0, 5\]"),
        ([0.0, 1.0], [0.5, 0.4], [1, 0], "class_ids must be integers"),
        ([], [], [], r"empty input"),
        ([0, 1], [0.5, np.inf], [1, 0], r"scores contains 1 NaN/inf"),
        ([0, 1], [0.5, 0.4], [1, 3], r"labels must contain only"),
    ],
)
def test_sparse_bad_input(class_ids, scores, labels, message):
    with pytest.raises(ValueError, match=message):
        partial_average_precision_sparse(np.array(class_ids), np.array(labels), np.array(scores),
                                         num_classes=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("unannotated_rows", [0, 2, 10])  # column path, column path, gather path
def test_equal_scores_in_neighbouring_classes_stay_separate_tie_groups(dtype, unannotated_rows):
    # Each class is one tie group of 3 annotated samples with 1 positive -> AP 1/3 for both; merging the
    # groups across the class boundary would give other values. 0.3 is not exact in float32, so the
    # float64 case exercises the column / argsort paths, the float32 case the packed-key path.
    labels = np.vstack([[[1, 0], [0, 0], [0, 1]], np.full((unannotated_rows, 2), -1)])
    scores = np.full(labels.shape, 0.3, dtype=dtype)
    np.testing.assert_allclose(partial_average_precision(labels, scores).ap_per_class, [1 / 3, 1 / 3])


def test_threshold_metric_keys_name_the_returned_metrics_in_order():
    assert THRESHOLD_METRIC_KEYS == ("CP", "CR", "CF1", "OP", "OR", "OF1")
    assert tuple(threshold_metrics(HAND_LABELS, HAND_SCORES, threshold=0.5)) == THRESHOLD_METRIC_KEYS
    assert tuple(topk_metrics(HAND_LABELS, HAND_SCORES, k=2)) == THRESHOLD_METRIC_KEYS


@pytest.mark.parametrize("convert", [np.asarray, torch.as_tensor])
def test_check_finite_scores_names_the_input_and_first_bad_entry(convert):
    check_finite_scores(convert(np.array([[1e308, 1e308]])), "x")  # finite although the sum overflows
    with pytest.raises(ValueError, match=r"^model outputs contains 2 NaN/inf value\(s\) \(first at index "
                                         r"\(1, 0\): inf\); retrain$"):
        check_finite_scores(convert(np.array([[0.5, 1.0], [np.inf, np.nan]])), "model outputs",
                            hint="retrain")


# ------------------------------------------------------------------------------------------------
# The paper's names: thin aliases with the paper's signatures, also at the paper's import path
# ------------------------------------------------------------------------------------------------


def _random_partial_problem(seed: int):
    rng = np.random.default_rng(seed)
    labels = (rng.random((90, 8)) < 0.3).astype(np.int64)
    labels[rng.random(labels.shape) < 0.4] = -1
    labels[:, 0] = -1  # no annotated sample
    labels[labels[:, 1] == 1, 1] = 0  # no positive
    return labels, rng.random(labels.shape).astype(np.float32)


PAPER_IMPORT = ("from src.helper_functions.helper_functions import mAP, AP_partial, CocoDetection, "
                "CutoutPIL, average_precision, mAP_partial")


def test_paper_import_path_reexports_the_same_objects():
    import src.data.coco
    import src.data.transforms
    import src.metrics
    from src.helper_functions import helper_functions

    paper = {}
    exec(PAPER_IMPORT, paper)  # the paper's own import line
    for name in ("mAP", "AP_partial", "average_precision", "mAP_partial"):
        assert paper[name] is getattr(src.metrics, name)
    assert paper["CocoDetection"] is src.data.coco.CocoDetection
    assert paper["CutoutPIL"] is src.data.transforms.CutoutPIL
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        helper_functions.nothing  # noqa: B018


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_map_equals_mean_average_precision(seed):
    labels, scores = _random_partial_problem(seed)
    labels = np.where(labels == -1, 0, labels)
    assert mAP(labels, scores) == mean_average_precision(labels, scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_average_precision_takes_scores_first(seed):
    labels, scores = _random_partial_problem(seed)
    expected = average_precision_per_class(labels, scores)
    np.testing.assert_array_equal(average_precision(scores, labels), expected)
    # one class as 1-D arrays -> a float, as in the paper's per-class helper
    assert average_precision(scores[:, 2], labels[:, 2]) == average_precision_per_class(labels, scores)[2]
    assert isinstance(average_precision(scores[:, 2], labels[:, 2]), float)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_ap_partial_equals_partial_average_precision(seed):
    labels, scores = _random_partial_problem(seed)
    paper = AP_partial(labels, scores)
    ours = partial_average_precision(labels, scores)
    assert type(paper) is tuple and len(paper) == 6  # (ap, map, map_macro, n_no_labels, n_no_neg, n_no_pos)
    np.testing.assert_array_equal(paper[0], ours.ap_per_class)
    assert paper[1:] == (ours.mAP, ours.mAP_weighted, ours.skipped_no_labels, ours.skipped_no_negatives,
                         ours.skipped_no_positives)
    assert ours.skipped_no_labels == 1 and ours.skipped_no_positives >= 1
    assert isinstance(ours, PartialAP) and ours.num_classes_skipped == sum(paper[3:])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_map_partial_equals_partial_average_precision_map(seed):
    labels, scores = _random_partial_problem(seed)
    assert mAP_partial(labels, scores) == partial_average_precision(labels, scores).mAP
