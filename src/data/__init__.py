"""Datasets of the CSL reimplementation: COCO 2014, OpenImages V6 and LVIS v1.

`build_datasets(args)` returns ``(train_dataset, val_dataset)`` for ``args.dataset_type``:

* ``coco``: standard layout ``--data DIR`` with ``DIR/annotations/instances_{train,val}2014.json`` and
  images in ``DIR/train2014``, ``DIR/val2014``; or the paper code's layout ``--metadata DIR`` with
  ``DIR/train.json``, ``DIR/val.json`` and images under ``--data`` (joined with each ``file_name``;
  ``--data/train2014`` / ``--data/val2014`` are used instead when the images are there).
* ``openimages``: see `src.data.openimages` (``--metadata`` holds the label files, ``--data`` the images).
* ``lvis``: see `src.data.lvis` (``lvis_v1_{train,val}.json`` in ``--metadata``, ``--data/annotations``
  or ``--data``; images in ``--data/train2017``, ``--data/val2017``).

The train set gets the train pipeline (Resize, CutoutPIL, RandAugment, ToTensor), the val set the val
pipeline; ``args.jpeg_draft=False`` disables JPEG draft decoding (see `src.data.image_io`).
Partial labels are applied to the train set only: ``args.partial_labels`` (a file written by
``python -m coco_simulation``) or ``args.simulate_partial_type`` / ``args.simulate_partial_param``
(simulated on the fly with ``args.seed``); giving both is an error.

Submodules are imported lazily so that ``from src.data.labels import LabelMatrix`` stays light.
"""

from __future__ import annotations

import os

from src.data.labels import DatasetError, LabelMatrix
from src.data.partial_labels import describe_simulation, load_partial_labels, simulate_dataset
from src.utils.distributed import get_rank

__all__ = ["DatasetError", "LabelMatrix", "build_datasets", "resolve_coco_files"]

DATASET_TYPES = ("coco", "openimages", "lvis")


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
    """(image root, annotation file) of COCO ``split`` ('train' or 'val') for either supported layout."""
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
                       f"code). "
                       f"Download COCO 2014 or fix --data / --metadata")


def build_split(args, dataset_type: str, split: str, transform):
    """One split ('train' or 'val') of ``dataset_type`` with its full labels, from train.py's flags."""
    data = getattr(args, "data", "./data")
    metadata = getattr(args, "metadata", None)
    skip_bad = bool(getattr(args, "skip_bad_images", False))
    if dataset_type == "coco":
        from src.data.coco import CocoDetection

        root, ann_file = resolve_coco_files(data, metadata, split)
        return CocoDetection(root, ann_file, transform=transform, skip_bad_images=skip_bad)
    if dataset_type == "openimages":
        from src.data.openimages import openimages_from_args

        return openimages_from_args(args, split, transform)
    from src.data.lvis import lvis_from_args

    return lvis_from_args(args, split, transform)


def apply_partial_labels(args, train_dataset):
    """Replace the training labels by --partial_labels FILE or a --simulate_partial_type draw (if any)."""
    partial_path = getattr(args, "partial_labels", None)
    simulate_type = getattr(args, "simulate_partial_type", None)
    if partial_path and simulate_type:
        raise ValueError("give either --partial_labels FILE or --simulate_partial_type MODE, not both: the "
                         "file already holds simulated labels")
    if partial_path:
        loaded = load_partial_labels(partial_path, class_names=list(train_dataset.class_names),
                                     image_ids=list(train_dataset.image_ids))
        labels = loaded[0] if isinstance(loaded, tuple) else loaded
        labels = labels["labels"] if isinstance(labels, dict) else labels
        train_dataset.set_labels(labels)
    elif simulate_type:
        seed = getattr(args, "seed", None) or 0
        param = getattr(args, "simulate_partial_param", None)
        summary = simulate_dataset(train_dataset, simulate_type, param, seed)
        if get_rank() == 0:
            print(describe_simulation(simulate_type, args.simulate_partial_param, seed, summary))
    return train_dataset


def build_datasets(args):
    """(train_dataset, val_dataset) described by ``args`` (see the module docstring)."""
    from src.data.transforms import build_train_transform, build_val_transform

    dataset_type = str(getattr(args, "dataset_type", "coco")).lower()
    if dataset_type not in DATASET_TYPES:
        raise ValueError(f"--dataset_type must be one of {DATASET_TYPES}, got {dataset_type!r}")
    image_size = getattr(args, "image_size", 448)
    draft = bool(getattr(args, "jpeg_draft", True))  # False: bit-exact full-resolution JPEG decoding
    train_dataset = build_split(args, dataset_type, "train", build_train_transform(image_size, draft=draft))
    val_dataset = build_split(args, dataset_type, "val", build_val_transform(image_size, draft=draft))
    if list(train_dataset.class_names) != list(val_dataset.class_names):
        raise DatasetError(f"{dataset_type}: the train and val annotation files list different classes "
                           f"({len(train_dataset.class_names)} vs {len(val_dataset.class_names)}); use files "
                           f"from the same release")
    train_dataset = apply_partial_labels(args, train_dataset)
    return train_dataset, val_dataset
