"""LabelMatrix: dense and sparse layouts agree with each other and with hand-computed values."""

import numpy as np
import pytest

from src.data.labels import DatasetError, LabelMatrix, as_label_matrix

# 4 images x 5 classes, hand-written.
DENSE = np.array([[1, 0, -1, -1, 0],
                  [-1, -1, -1, -1, -1],
                  [0, 1, 1, -1, 0],
                  [1, -1, 0, 1, -1]], dtype=np.int8)
POS = [[0], [], [1, 2], [0, 3]]
NEG = [[1, 4], [], [0, 4], [2]]


def both_layouts():
    return LabelMatrix.from_dense(DENSE), LabelMatrix.from_sparse(POS, NEG, num_classes=5)


def test_sparse_equals_dense_rowwise_and_whole():
    dense, sparse = both_layouts()
    assert sparse.is_sparse and not dense.is_sparse
    assert dense.shape == sparse.shape == (4, 5)
    for i in range(4):
        np.testing.assert_array_equal(sparse.row(i), DENSE[i])
        np.testing.assert_array_equal(dense.row(i), DENSE[i])
        assert sparse.row(i).dtype == np.int8
    np.testing.assert_array_equal(sparse.to_dense(), DENSE)
    np.testing.assert_array_equal(sparse.row(-1), DENSE[3])
    assert dense.equals(sparse) and sparse.equals(dense)


def test_counts_match_hand_computed():
    for matrix in both_layouts():
        np.testing.assert_array_equal(matrix.positive_counts(), [2, 1, 1, 1, 0])
        np.testing.assert_array_equal(matrix.negative_counts(), [1, 1, 1, 0, 2])
        np.testing.assert_array_equal(matrix.annotated_counts(), [3, 2, 2, 1, 2])


def test_subset_keeps_order_and_layout():
    for matrix in both_layouts():
        sub = matrix.subset([3, 0, 3])
        assert sub.is_sparse == matrix.is_sparse
        np.testing.assert_array_equal(sub.to_dense(), DENSE[[3, 0, 3]])
        masked = matrix.subset(np.array([False, True, True, False]))
        np.testing.assert_array_equal(masked.to_dense(), DENSE[[1, 2]])
        assert matrix.subset([]).shape == (0, 5)


def test_random_matrices_round_trip_through_both_layouts():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(50, 13), p=[0.6, 0.3, 0.1])
    dense = LabelMatrix.from_dense(labels)
    sparse = dense.to_sparse()
    np.testing.assert_array_equal(sparse.to_dense(), labels)
    rows = rng.integers(0, 50, size=20)
    np.testing.assert_array_equal(sparse.subset(rows).to_dense(), labels[rows])
    np.testing.assert_array_equal(sparse.positive_counts(), (labels == 1).sum(0))
    np.testing.assert_array_equal(sparse.negative_counts(), (labels == 0).sum(0))


def test_row_is_a_copy():
    dense, sparse = both_layouts()
    dense.row(0)[:] = 1
    np.testing.assert_array_equal(dense.row(0), DENSE[0])


@pytest.mark.parametrize("bad", [np.array([[2, 0]]), np.array([[0.5, 1.0]]), np.array([[np.nan, 1.0]])])
def test_invalid_dense_values_rejected(bad):
    with pytest.raises(ValueError, match="1 \\(positive\\)|NaN"):
        LabelMatrix.from_dense(bad)


def test_invalid_sparse_inputs_rejected():
    with pytest.raises(ValueError, match="class ids must lie in"):
        LabelMatrix.from_sparse([[5]], [[]], num_classes=5)
    with pytest.raises(ValueError, match="both positive and negative"):
        LabelMatrix.from_sparse([[1]], [[1]], num_classes=5)
    with pytest.raises(ValueError, match="one list of each"):
        LabelMatrix.from_sparse([[1]], [], num_classes=5)


def test_to_dense_refuses_huge_matrices():
    sparse = LabelMatrix.from_sparse([[0]] * 10, [[]] * 10, num_classes=1000)
    with pytest.raises(MemoryError, match="row\\(\\)/subset\\(\\)"):
        sparse.to_dense(max_bytes=1000)


def test_as_label_matrix_checks_shape():
    with pytest.raises(DatasetError, match="shape \\(4, 5\\).*3 images x 5 classes"):
        as_label_matrix(DENSE, 3, 5)
    assert as_label_matrix(DENSE, 4, 5).equals(LabelMatrix.from_dense(DENSE))


def test_fingerprint_is_the_same_in_both_layouts_and_changes_with_any_label():
    rng = np.random.default_rng(3)
    dense = rng.integers(-1, 2, size=(40, 7)).astype(np.int8)
    as_dense, as_sparse = LabelMatrix.from_dense(dense), LabelMatrix.from_dense(dense).to_sparse()
    assert as_dense.fingerprint() == as_sparse.fingerprint()
    for value in (-1, 0, 1):  # any single change of an entry changes the fingerprint
        changed = dense.copy()
        changed[5, 3] = value if value != dense[5, 3] else (value + 2) % 3 - 1
        assert LabelMatrix.from_dense(changed).fingerprint() != as_dense.fingerprint()
    assert LabelMatrix.from_dense(dense[:, :6]).fingerprint() != as_dense.fingerprint()  # shape counts
