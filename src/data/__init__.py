"""Datasets of the CSL reimplementation: COCO 2014, OpenImages V6, LVIS v1, your own CSV files (and the
embedded benchmark, read as COCO or CSV). `build_split` reads one split with its full labels,
`apply_partial_labels` replaces them by a partial label file or a simulated draw, `build_datasets(args)`
reads the command line's data flags. The library prints nothing: callers report `describe_simulation` and
``dataset.describe_load_stats()``.
"""

from __future__ import annotations

import os

from src.data.base import eval_view
from src.data.coco import CocoDetection
from src.data.csv_dataset import csv_dataset
from src.data.labels import DatasetError, LabelMatrix
from src.data.lvis import lvis_dataset
from src.data.openimages import openimages_dataset
from src.data.partial_labels import describe_simulation, load_partial_labels, simulate_dataset
from src.data.transforms import build_train_transform, build_val_transform


DATASET_TYPES = ("coco", "openimages", "lvis", "csv")
SPLITS = ("train", "val")


def _first_existing_dir(candidates: list[str], probe_name: str | None) -> str:
    """The first candidate folder holding ``probe_name``; else the first existing folder; else the first."""
    existing = [c for c in candidates if os.path.isdir(c)]
    if probe_name is not None:
        for folder in existing:
            if os.path.exists(os.path.join(folder, probe_name)):
                return folder
    return existing[0] if existing else candidates[0]


def _first_file_name(ann_file: str) -> str | None:
    """Cheap probe: the first ``"file_name"`` value in a COCO JSON (reads at most 1 MB)."""
    with open(ann_file, encoding="utf-8", errors="replace") as handle:
        head = handle.read(1 << 20)
    key = head.find('"file_name"')
    if key < 0:
        return None
    start = head.find('"', head.find(":", key) + 1)
    end = head.find('"', start + 1)
    return head[start + 1:end] if start >= 0 and end > start else None


def resolve_coco_files(data: str, metadata: str | None, split: str) -> tuple[str, str]:
    """(image root, annotation file): ``data/annotations/instances_{split}2014.json`` with images in
    ``data/{split}2014``, or the paper code's ``metadata/{split}.json`` with images under ``data``."""
    folder = f"{split}2014"
    standard = os.path.join(data, "annotations", f"instances_{folder}.json")
    if os.path.isfile(standard):
        return _first_existing_dir([os.path.join(data, folder), data], _first_file_name(standard)), standard
    if metadata:
        paper = os.path.join(metadata, f"{split}.json")
        if os.path.isfile(paper):
            return _first_existing_dir([data, os.path.join(data, folder)], _first_file_name(paper)), paper
    raise DatasetError(f"COCO {split} annotations not found: looked for {standard} (layout --data DIR with "
                       f"annotations/, train2014/, val2014/) and "
                       f"{os.path.join(metadata or '<--metadata>', split + '.json')} (layout of the paper's "
                       f"code). Download COCO 2014 or fix --data / --metadata")


def build_split(dataset_type: str, split: str, transform=None, *, data: str, metadata: str | None = None,
                skip_bad_images: bool = False, unknown_mids: str | None = None,
                openimages_val_split: str = "validation"):
    """One split of ``dataset_type`` with its full labels; ``unknown_mids`` ('error', 'skip' or None: the
    format's default) and ``openimages_val_split`` ('validation' or 'test') apply to OpenImages only."""
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"dataset_type must be one of {DATASET_TYPES}, got {dataset_type!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if dataset_type == "coco":
        root, ann_file = resolve_coco_files(data, metadata, split)
        return CocoDetection(root, ann_file, transform=transform, skip_bad_images=skip_bad_images)
    if dataset_type == "openimages":
        return openimages_dataset(split, transform, data=data, metadata=metadata,
                                  skip_bad_images=skip_bad_images, unknown_mids=unknown_mids,
                                  val_split=openimages_val_split)
    if dataset_type == "csv":
        return csv_dataset(split, transform, data=data, metadata=metadata, skip_bad_images=skip_bad_images)
    return lvis_dataset(split, transform, data=data, metadata=metadata, skip_bad_images=skip_bad_images)


def apply_partial_labels(dataset, *, partial_labels: str | None = None, simulate_type: str | None = None,
                         simulate_param: float | None = None, seed: int = 0) -> dict | None:
    """Replace the labels of ``dataset`` in place by a partial label file or a ``simulate_type`` draw;
    returns the simulation's summary (for `describe_simulation`), else None."""
    if partial_labels and simulate_type:
        raise ValueError("give either --partial_labels FILE or --simulate_partial_type MODE, not both: the "
                         "file already holds simulated labels")
    if partial_labels:
        dataset.set_labels(load_partial_labels(partial_labels, class_names=list(dataset.class_names),
                                               image_ids=list(dataset.image_ids), full_labels=dataset.labels))
        return None
    if simulate_type:
        return simulate_dataset(dataset, simulate_type, simulate_param, seed)
    return None


def build_split_from_args(args, split: str, transform=None):
    return build_split(str(args.dataset_type).lower(), split, transform, data=args.data,
                       metadata=args.metadata, skip_bad_images=args.skip_bad_images,
                       unknown_mids=args.unknown_mids, openimages_val_split=args.openimages_val_split)


def build_datasets_with_summary(args):
    """(train_dataset with its partial labels, val_dataset with full labels, simulation summary or None)."""
    train_transform = build_train_transform(args.image_size, draft=args.jpeg_draft)
    val_transform = build_val_transform(args.image_size, draft=args.jpeg_draft)
    train_dataset = build_split_from_args(args, "train", train_transform)
    val_dataset = build_split_from_args(args, "val", val_transform)
    if list(train_dataset.class_names) != list(val_dataset.class_names):
        raise DatasetError(f"{args.dataset_type}: the train and val annotation files list different classes "
                           f"({len(train_dataset.class_names)} vs {len(val_dataset.class_names)}); use files "
                           f"from the same release")
    summary = apply_partial_labels(train_dataset, partial_labels=args.partial_labels,
                                   simulate_type=args.simulate_partial_type,
                                   simulate_param=args.simulate_partial_param, seed=args.seed)
    return train_dataset, val_dataset, summary


def build_datasets(args):
    train_dataset, val_dataset, _ = build_datasets_with_summary(args)
    return train_dataset, val_dataset
