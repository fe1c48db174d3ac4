"""LVIS v1 as a partially labelled multi-label dataset (1,203 classes, federated annotation).

Image i, class c: 1 if c is annotated on it or in its ``not_exhaustive_category_ids``, 0 if in its
``neg_category_ids`` (annotated wins), else -1. Columns follow ascending category id; ``frequency_groups``
('r'/'c'/'f') lets evaluation report mAP per group. Images: ``{root}/`` + the last two parts of ``coco_url``.
"""

from __future__ import annotations

import os

import numpy as np

from src.data.base import MultiLabelImageDataset, require_dir, require_file
from src.data.coco import check_ids_and_names, read_json
from src.data.labels import DatasetError
from src.data.openimages import build_label_csr, keep_labelled_rows

FREQUENCY_GROUPS = ("r", "c", "f")


def _load_json(path: str) -> dict:
    require_file(path, "LVIS annotation file", "Download lvis_v1_train.json / lvis_v1_val.json and pass "
                 "their folder as --metadata (or put them in --data/annotations)")
    content = read_json(path, "LVIS annotation file")
    missing = [k for k in ("images", "annotations", "categories") if k not in content]
    if missing:
        raise DatasetError(f"LVIS annotation file {path} lacks {missing}; it must be an LVIS v1 JSON")
    check_ids_and_names(content, path)
    return content


def _relative_path(image: dict, source: str) -> str:
    url = image.get("coco_url") or image.get("file_name")
    if not url:
        raise DatasetError(f"{source}: image {image.get('id')} has neither 'coco_url' nor 'file_name'")
    parts = url.rstrip("/").split("/")
    return "/".join(parts[-2:]) if "coco_url" in image else url


class LVISDataset(MultiLabelImageDataset):
    """LVIS v1 image-level labels; ``frequency_groups`` lists 'r'/'c'/'f' per class."""

    def __init__(self, root: str, annFile: str, transform=None, target_transform=None,
                 skip_bad_images: bool = False):
        require_dir(root, "LVIS image root", "Pass the folder holding train2017/ and val2017/ as --data")
        self.root = root
        self.ann_file = annFile
        self.transform = transform
        self.target_transform = target_transform
        content = _load_json(annFile)
        categories = sorted(content["categories"], key=lambda c: c["id"])
        if not categories:
            raise DatasetError(f"{annFile}: 'categories' is empty")
        self.category_ids = [c["id"] for c in categories]
        self.class_names = [c["name"] for c in categories]
        self.frequency_groups = [c.get("frequency") for c in categories]
        if any(g not in FREQUENCY_GROUPS for g in self.frequency_groups):
            raise DatasetError(f"{annFile}: every category needs 'frequency' in {FREQUENCY_GROUPS}; use the "
                               f"LVIS v1 files, which have it")
        self._build_labels(content)
        self._finish_init(annFile, skip_bad_images)

    def _build_labels(self, content: dict) -> None:
        column_of = {cat_id: c for c, cat_id in enumerate(self.category_ids)}
        images = content["images"]
        row_of = {image["id"]: r for r, image in enumerate(images)}
        rows, cols, positive = [], [], []
        try:
            for ann in content["annotations"]:
                rows.append(row_of[ann["image_id"]])
                cols.append(column_of[ann["category_id"]])
                positive.append(True)
            for r, image in enumerate(images):
                for key, is_positive in (("not_exhaustive_category_ids", True), ("neg_category_ids", False)):
                    ids = image.get(key, [])
                    rows.extend([r] * len(ids))
                    cols.extend(column_of[c] for c in ids)
                    positive.extend([is_positive] * len(ids))
        except KeyError as exc:
            raise DatasetError(f"{self.ann_file}: image or category id {exc} is used but not listed in "
                               f"'images'/'categories'; the file is inconsistent") from None
        labels, self.load_stats = build_label_csr(np.asarray(rows, np.int64), np.asarray(cols, np.int64),
                                                  np.asarray(positive, bool), len(images), len(column_of))
        keep, self.labels = keep_labelled_rows(labels, self.load_stats)
        self.image_ids = [images[r]["id"] for r in keep]
        self.image_paths = [os.path.join(self.root, _relative_path(images[r], self.ann_file)) for r in keep]


def lvis_dataset(split: str, transform=None, *, data: str, metadata: str | None = None,
                 skip_bad_images: bool = False) -> LVISDataset:
    """``lvis_v1_{split}.json`` from the first of ``metadata``, ``data/annotations``, ``data`` that has it."""
    name = f"lvis_v1_{split}.json"
    folders = [f for f in (metadata, os.path.join(data, "annotations"), data) if f]
    candidates = [os.path.join(folder, name) for folder in folders]
    ann_file = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    if not os.path.isfile(ann_file):
        raise DatasetError(f"LVIS {split} annotations not found; looked for {candidates}. Download {name} "
                           f"and pass its folder as --metadata")
    return LVISDataset(data, ann_file, transform=transform, skip_bad_images=bool(skip_bad_images))
