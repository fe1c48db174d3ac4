"""Label matrices: (N_images x N_classes) of 1 (positive), 0 (verified absent) and -1 (not annotated).

`LabelMatrix` stores one dense (int8 (N, C); COCO: 82k x 80 = 6.6 MB) or sparse: CSR lists of each row's
positive and negative class ids, the rest -1 (OpenImages' ~9M x 9,605 would need ~86 GB dense). A sparse
matrix is densified one row at a time (`row`); `to_dense` refuses more than ``max_bytes``, so that an
accidental densification fails fast instead of swapping. Both layouts give identical results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1
_DEFAULT_MAX_DENSE_BYTES = 8 * 2**30


class DatasetError(ValueError):
    """A dataset file or folder is missing, malformed or inconsistent; the message says how to fix it."""


def validate_label_matrix(labels, name: str = "labels") -> np.ndarray:
    """``labels`` as a 2-D int8 array, checked to hold only 1, 0 and -1."""
    array = np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (images x classes) matrix, got shape {array.shape}")
    if array.size and not np.isin(array, (-1, 0, 1)).all():
        bad = np.unique(array[~np.isin(array, (-1, 0, 1))])[:5]
        raise ValueError(
            f"{name} may only contain 1 (positive), 0 (negative) and -1 (un-annotated); found {bad.tolist()}"
        )
    return array.astype(np.int8, copy=False)


def _as_index_array(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        return np.zeros(0, dtype=np.int32)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"LabelMatrix: {name} must hold integer class ids, got dtype {array.dtype}")
    return array.astype(np.int32, copy=False).ravel()


def _csr_from_rows(rows: Sequence, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-row id lists into (indptr int64 (N+1,), indices int32)."""
    parts = [_as_index_array(r, name) for r in rows]
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    indptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return indptr, indices.astype(np.int32, copy=False)


def _subset_csr(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = indptr[rows + 1] - indptr[rows]
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    # Gather positions: for each kept row, the range indptr[r] .. indptr[r+1] (vectorised repeat+arange).
    starts = np.repeat(indptr[rows] - new_indptr[:-1], lengths)
    positions = starts + np.arange(new_indptr[-1], dtype=np.int64)
    return new_indptr, indices[positions]


class LabelMatrix:
    """An N x C matrix of {1, 0, -1} labels; build it with `from_dense`, `from_sparse` or `from_csr`."""

    def __init__(self, num_samples: int, num_classes: int, dense: np.ndarray | None = None,
                 pos_csr: tuple[np.ndarray, np.ndarray] | None = None,
                 neg_csr: tuple[np.ndarray, np.ndarray] | None = None):
        self._num_samples = int(num_samples)
        self._num_classes = int(num_classes)
        self._dense = dense
        self._pos = pos_csr
        self._neg = neg_csr

    @classmethod
    def from_dense(cls, array) -> LabelMatrix:
        """Wrap an (N, C) array of values in {1, 0, -1} (any numeric dtype; stored as int8)."""
        dense = np.ascontiguousarray(validate_label_matrix(array, "LabelMatrix.from_dense: labels"))
        return cls(dense.shape[0], dense.shape[1], dense=dense)

    @classmethod
    def from_sparse(cls, pos_ids_per_row: Sequence, neg_ids_per_row: Sequence,
                    num_classes: int) -> LabelMatrix:
        """Build a sparse matrix from per-row lists of positive and negative class ids (rest is -1)."""
        if len(pos_ids_per_row) != len(neg_ids_per_row):
            raise ValueError(f"LabelMatrix.from_sparse: {len(pos_ids_per_row)} positive rows but "
                             f"{len(neg_ids_per_row)} negative rows; give one list of each per image")
        pos = _csr_from_rows(pos_ids_per_row, "positive ids")
        neg = _csr_from_rows(neg_ids_per_row, "negative ids")
        return cls.from_csr(pos[0], pos[1], neg[0], neg[1], num_classes)

    @classmethod
    def from_csr(cls, pos_indptr, pos_indices, neg_indptr, neg_indices, num_classes: int,
                 validate: bool = True) -> LabelMatrix:
        """Wrap CSR arrays: row i's positives are ``pos_indices[pos_indptr[i]:pos_indptr[i+1]]``."""
        pos_indptr = np.asarray(pos_indptr, dtype=np.int64)
        neg_indptr = np.asarray(neg_indptr, dtype=np.int64)
        pos_indices = _as_index_array(pos_indices, "positive ids")
        neg_indices = _as_index_array(neg_indices, "negative ids")
        if pos_indptr.ndim != 1 or pos_indptr.shape != neg_indptr.shape or len(pos_indptr) == 0:
            raise ValueError("LabelMatrix.from_csr: pos_indptr and neg_indptr must be 1-D arrays of "
                             "the same length N+1")
        matrix = cls(len(pos_indptr) - 1, num_classes, pos_csr=(pos_indptr, pos_indices),
                     neg_csr=(neg_indptr, neg_indices))
        if validate:
            matrix._validate_sparse()
        return matrix

    def _validate_sparse(self) -> None:
        for name, (indptr, indices) in (("positive", self._pos), ("negative", self._neg)):
            if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
                raise ValueError(f"LabelMatrix: {name} indptr is not a valid CSR index pointer")
            if len(indices) and (indices.min() < 0 or indices.max() >= self._num_classes):
                raise ValueError(f"LabelMatrix: {name} class ids must lie in [0, {self._num_classes}); "
                                 f"found range [{indices.min()}, {indices.max()}]")
        # A class may not be both positive and negative in one row (nor listed twice).
        rows = np.concatenate([self._row_ids(self._pos[0]), self._row_ids(self._neg[0])])
        cols = np.concatenate([self._pos[1], self._neg[1]]).astype(np.int64)
        keys = rows * self._num_classes + cols
        if len(np.unique(keys)) != len(keys):
            raise ValueError("LabelMatrix: a class id is listed twice in one row (or both positive and "
                             "negative); deduplicate the annotations")

    @staticmethod
    def _row_ids(indptr: np.ndarray) -> np.ndarray:
        return np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))

    @property
    def num_samples(self) -> int:
        return self._num_samples

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def shape(self) -> tuple[int, int]:
        return self._num_samples, self._num_classes

    @property
    def is_sparse(self) -> bool:
        return self._dense is None

    def __len__(self) -> int:
        return self._num_samples

    def __repr__(self) -> str:
        layout = "sparse" if self.is_sparse else "dense"
        return f"LabelMatrix({self._num_samples} x {self._num_classes}, {layout})"

    def row(self, i: int) -> np.ndarray:
        """Labels of image ``i`` as a fresh int8 array of shape (C,)."""
        if not -self._num_samples <= i < self._num_samples:
            raise IndexError(f"LabelMatrix.row: index {i} out of range for {self._num_samples} rows")
        i = int(i) % self._num_samples
        if self._dense is not None:
            return self._dense[i].copy()
        out = np.full(self._num_classes, UNKNOWN, dtype=np.int8)
        out[self._pos[1][self._pos[0][i]:self._pos[0][i + 1]]] = POSITIVE
        out[self._neg[1][self._neg[0][i]:self._neg[0][i + 1]]] = NEGATIVE
        return out

    def to_dense(self, max_bytes: int = _DEFAULT_MAX_DENSE_BYTES) -> np.ndarray:
        """The whole matrix as int8 (N, C); a copy for the dense layout too, so callers may modify it."""
        if self._dense is not None:
            return self._dense.copy()
        n_bytes = self._num_samples * self._num_classes
        if n_bytes > max_bytes:
            raise MemoryError(f"LabelMatrix.to_dense: {self._num_samples} x {self._num_classes} labels "
                              f"need {n_bytes / 2**30:.1f} GiB; use row()/subset() or raise max_bytes")
        out = np.full((self._num_samples, self._num_classes), UNKNOWN, dtype=np.int8)
        out[self._row_ids(self._pos[0]), self._pos[1]] = POSITIVE
        out[self._row_ids(self._neg[0]), self._neg[1]] = NEGATIVE
        return out

    def csr(self) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """((pos_indptr, pos_indices), (neg_indptr, neg_indices)); built from the dense layout if needed."""
        if self._dense is not None:
            return self.to_sparse().csr()
        return self._pos, self._neg

    def to_sparse(self) -> LabelMatrix:
        if self._dense is None:
            return self
        csr = []
        for value in (POSITIVE, NEGATIVE):
            rows, cols = np.nonzero(self._dense == value)
            indptr = np.zeros(self._num_samples + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=self._num_samples), out=indptr[1:])
            csr += [indptr, cols]
        return LabelMatrix.from_csr(*csr, self._num_classes, validate=False)

    def subset(self, indices) -> LabelMatrix:
        """Rows ``indices`` (ints or a boolean mask), in that order, in the same layout."""
        rows = np.asarray(indices)
        if rows.dtype == bool:
            if rows.shape != (self._num_samples,):
                raise ValueError(f"LabelMatrix.subset: boolean mask has shape {rows.shape}, "
                                 f"expected ({self._num_samples},)")
            rows = np.nonzero(rows)[0]
        rows = rows.astype(np.int64, copy=False).ravel()
        if len(rows) and (rows.min() < -self._num_samples or rows.max() >= self._num_samples):
            raise IndexError(f"LabelMatrix.subset: indices out of range for {self._num_samples} rows")
        rows = rows % max(self._num_samples, 1)
        if self._dense is not None:
            return LabelMatrix.from_dense(self._dense[rows])
        pos = _subset_csr(*self._pos, rows)
        neg = _subset_csr(*self._neg, rows)
        return LabelMatrix.from_csr(pos[0], pos[1], neg[0], neg[1], self._num_classes, validate=False)

    def positive_counts(self) -> np.ndarray:
        """Positive images per class, int64 (C,)."""
        return self._counts(POSITIVE)

    def negative_counts(self) -> np.ndarray:
        """Negative images per class, int64 (C,)."""
        return self._counts(NEGATIVE)

    def annotated_counts(self) -> np.ndarray:
        """Images whose label for the class is known, int64 (C,)."""
        return self.positive_counts() + self.negative_counts()

    def annotated_counts_per_row(self) -> np.ndarray:
        """Known labels per image, int64 (N,)."""
        if self._dense is not None:
            return (self._dense != UNKNOWN).sum(axis=1, dtype=np.int64)
        return np.diff(self._pos[0]) + np.diff(self._neg[0])

    def _counts(self, value: int) -> np.ndarray:
        if self._dense is not None:
            return (self._dense == value).sum(axis=0, dtype=np.int64)
        indices = self._pos[1] if value == POSITIVE else self._neg[1]
        return np.bincount(indices, minlength=self._num_classes).astype(np.int64)

    def fingerprint(self) -> str:
        """sha256 (hex) of the shape and the CSR arrays: equal matrices give equal fingerprints in either
        layout when each row's ids are sorted (as `to_sparse` and the readers build them)."""
        (pos_indptr, pos_indices), (neg_indptr, neg_indices) = self.csr()
        digest = hashlib.sha256()
        for array in (self.shape, pos_indptr, pos_indices, neg_indptr, neg_indices):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
            digest.update(b"|")
        return digest.hexdigest()

    def equals(self, other: LabelMatrix) -> bool:
        """Same shape and values, whatever the layouts and the order of each row's ids."""
        if self.shape != other.shape:
            return False
        a_pos, a_neg = self.csr()
        b_pos, b_neg = other.csr()
        return all(_same_csr_content(a, b, self._num_classes) for a, b in ((a_pos, b_pos), (a_neg, b_neg)))


def _same_csr_content(a, b, num_classes: int) -> bool:
    if not np.array_equal(a[0], b[0]):
        return False
    rows = LabelMatrix._row_ids(a[0])
    key_a = np.sort(rows * num_classes + a[1])
    key_b = np.sort(rows * num_classes + b[1])
    return np.array_equal(key_a, key_b)


def as_label_matrix(labels, num_samples: int, num_classes: int, source: str = "labels") -> LabelMatrix:
    """A LabelMatrix (or an array, wrapped) whose shape is checked against the dataset's."""
    matrix = labels if isinstance(labels, LabelMatrix) else LabelMatrix.from_dense(labels)
    if matrix.shape != (num_samples, num_classes):
        raise DatasetError(f"{source}: label matrix has shape {matrix.shape} but the dataset has "
                           f"{num_samples} images x {num_classes} classes; the labels were made for a "
                           f"different dataset, split or class list")
    return matrix
