"""Shared behaviour of the multi-label image datasets (COCO, OpenImages, LVIS, embedded): ``dataset[i]`` is
``(image, target)``, target float32 (C,) with 1 (positive), 0 (negative) and -1 (un-annotated).
"""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from src.data.image_io import (
    HEADER_CHECK_LIMIT,
    ImageReadError,
    PathSequence,
    image_problem,
    load_rgb,
    rgb_bytes_within,
    scan_images,
)
from src.data.labels import DatasetError, LabelMatrix, as_label_matrix

_EXAMPLES = 3  # bad files named in a start-up error or warning
DEFAULT_IMAGE_CACHE_BYTES = 512 * 2**20  # decoded RGB pixels a cached dataset may hold


class SkippedImagesWarning(UserWarning):
    """Some images were dropped by the start-up scan, or replaced at read (``skip_bad_images=True``)."""


def take(sequence, rows: np.ndarray):
    if isinstance(sequence, PathSequence | np.ndarray):
        return sequence.take(rows) if isinstance(sequence, PathSequence) else sequence[rows]
    return [sequence[int(r)] for r in rows]


def require_file(path: str, what: str, fix: str) -> None:
    if not os.path.isfile(path):
        raise DatasetError(f"{what} not found: {path}. {fix}")


def require_dir(path: str, what: str, fix: str) -> None:
    if not os.path.isdir(path):
        raise DatasetError(f"{what} not found: {path}. {fix}")


def eval_view(dataset, transform):
    """A shallow copy of ``dataset`` (same images and labels) that applies ``transform`` instead, e.g. the
    training set with the eval transform for the clean pass (`src.engine.compute_prior_from_model`)."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


class MultiLabelImageDataset(Dataset):
    """Subclasses fill ``root, class_names, image_ids, image_paths, labels``, then call `_finish_init`."""

    root: str
    class_names: list[str]
    image_ids: list
    image_paths: list[str] | PathSequence
    labels: LabelMatrix
    transform = None
    target_transform = None
    skip_bad_images = False
    load_stats: dict | None = None  # counts of the label reader (OpenImages, LVIS); see describe_load_stats
    label_source = ""
    skipped_reads: torch.Tensor | None = None
    # Decoded RGB uint8 pixels, one per row (an N x H x W x 3 array when all sizes agree), and the JPEG
    # draft size they were decoded for; None unless cache_decoded_images() succeeded.
    _decoded: np.ndarray | list | None = None
    _decoded_draft: tuple | None = None

    def _finish_init(self, source: str, skip_bad_images: bool) -> None:
        """Check every image file once, so that a bad file is found at start-up, not after an epoch."""
        self.skip_bad_images = bool(skip_bad_images)
        self.label_source = source
        if self.labels.num_samples == 0:
            raise DatasetError(f"{source}: the dataset is empty (no image has a usable label). Check that "
                               f"the annotation file and split are the intended ones")
        # Shared with DataLoader workers (forked or spawned): images replaced at read (--skip_bad_images).
        self.skipped_reads = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._check_images(header=len(self.image_paths) <= HEADER_CHECK_LIMIT)

    def verify_decoding(self, progress: bool = False) -> None:
        """Decode every image once: a file truncated after its header passes the start-up check."""
        self._check_images(header=True, full=True, progress=progress)

    def _check_images(self, header: bool, full: bool = False, progress: bool = False) -> None:
        source = self.label_source
        ok = scan_images(self.image_paths, header=header, full=full, progress=progress)
        n_bad = int((~ok).sum())
        if not n_bad:
            return
        what = "missing or cannot be decoded" if header else "missing"
        examples = ", ".join(f"{path} ({image_problem(path, header, full)})"
                             for path in (self.image_paths[int(i)] for i in np.nonzero(~ok)[0][:_EXAMPLES]))
        if n_bad == len(ok):
            raise DatasetError(f"{source}: none of the {len(ok)} image files can be read (e.g. {examples}); "
                               f"check that --data points at the image folder ({self.root})")
        if not self.skip_bad_images:
            raise DatasetError(f"{source}: {n_bad} of {len(ok)} image files are {what}: {examples}"
                               f"{' ...' if n_bad > _EXAMPLES else ''}. Replace or delete them, or pass "
                               f"--skip_bad_images to train without them")
        warnings.warn(f"{source}: skipped {n_bad} of {len(ok)} images that are {what} (--skip_bad_images), "
                      f"e.g. {examples}", SkippedImagesWarning, stacklevel=4)
        self._keep_rows(np.nonzero(ok)[0])

    # ----------------------------------------------------------------- torch Dataset API
    def __len__(self) -> int:
        return self.labels.num_samples

    def __getitem__(self, index: int):
        image, index = self._load_image(index)
        if self.transform is not None:
            image = self.transform(image)
        target = torch.from_numpy(self.labels.row(index).astype(np.float32))
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def _load_image(self, index: int):
        """(image, row): the start-up scan reads headers only, so truncated pixel data is found here; with
        skip_bad_images the next readable row (image and target together) replaces it, with a warning."""
        draft_size = getattr(self.transform, "draft_size", None)
        if self._decoded is not None and draft_size == self._decoded_draft:
            row = index % len(self)
            pixels = self._decoded[row]
            # A new image from a copy of the bytes: transforms such as CutoutPIL draw on it in place.
            return Image.frombytes("RGB", (pixels.shape[1], pixels.shape[0]), pixels.tobytes()), row
        for offset in range(len(self)):
            row = (index + offset) % len(self)
            try:
                return load_rgb(self.image_paths[row], draft_size=draft_size), row
            except ImageReadError as error:
                if not self.skip_bad_images:
                    raise
                if self.skipped_reads is not None:
                    self.skipped_reads += 1
                warnings.warn(f"skipped at read (--skip_bad_images), the next image is used instead: "
                              f"{error.reason}", SkippedImagesWarning, stacklevel=3)
        raise DatasetError(f"none of the {len(self)} images could be decoded; check --data ({self.root})")

    def cache_decoded_images(self, max_bytes: int = DEFAULT_IMAGE_CACHE_BYTES) -> bool:
        """Decode every image once, here (DataLoader workers inherit the pixels), for small datasets whose
        tiny PNGs cost more to decode than the transforms; False (nothing cached) over ``max_bytes``."""
        if rgb_bytes_within(self.image_paths, max_bytes) is None:
            return False
        draft_size = getattr(self.transform, "draft_size", None)
        try:
            pixels = [np.asarray(load_rgb(path, draft_size=draft_size)) for path in self.image_paths]
        except ImageReadError:
            return False
        # One array when all sizes agree: a single object, so forked workers share its pages untouched.
        same_size = len({p.shape for p in pixels}) == 1
        self._decoded = np.stack(pixels) if same_size else pixels
        self._decoded_draft = draft_size
        return True

    # ----------------------------------------------------------------- label / subset API
    def describe_load_stats(self) -> str | None:
        """One line of the label reader's ``load_stats`` for the caller to print; None for COCO."""
        if self.load_stats is None:
            return None
        stats = self.load_stats
        parts = [f"{stats.get('conflicting_labels', 0)} (image, class) pairs listed both positive and "
                 f"negative counted as positive",
                 f"{stats.get('duplicate_labels', 0)} repeated labels kept once"]
        if "unknown_mid_labels" in stats:
            parts.append(f"{stats['unknown_mid_labels']} labels of classes outside the class list skipped")
        parts.append(f"{stats.get('images_without_labels', 0)} images without a usable label dropped")
        return (f"{self.label_source}: {len(self)} images x {self.num_classes} classes; "
                + ", ".join(parts))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def classes(self) -> dict[int, str]:
        """Class index -> name, the form the paper's code used (``train_dataset.classes``)."""
        return dict(enumerate(self.class_names))

    def set_labels(self, labels) -> None:
        self.labels = as_label_matrix(labels, len(self), self.num_classes,
                                      source=f"{type(self).__name__}.set_labels")

    def subset(self, indices) -> MultiLabelImageDataset:
        """A dataset of the same type over rows ``indices``; images and transforms are shared."""
        rows = np.asarray(indices)
        if rows.dtype == bool:
            rows = np.nonzero(rows)[0]
        rows = rows.astype(np.int64, copy=False).ravel()
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"subset: indices must lie in [0, {len(self)})")
        new = copy.copy(self)
        new._keep_rows(rows)
        return new

    def _keep_rows(self, rows: np.ndarray) -> None:
        self.labels = self.labels.subset(rows)
        self.image_paths = take(self.image_paths, rows)
        self.image_ids = take(self.image_ids, rows)
        if self._decoded is not None:
            self._decoded = take(self._decoded, rows)
