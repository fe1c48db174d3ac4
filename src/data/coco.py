"""MS-COCO 2014 as a fully labelled multi-label dataset (the source of the simulated partial labels).

As in the paper's code: an image is in the dataset iff it has an annotation (82,081 of 82,783 train2014
images), class c is 1 if any of its annotations (crowd included) has that category, else 0 (no -1).
Columns follow ascending category id; rows the order in which images first appear in ``annotations``
(pycocotools' ``imgToAnns``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from collections import Counter

import numpy as np

from src.data.base import MultiLabelImageDataset, require_dir, require_file
from src.data.labels import DatasetError, LabelMatrix


def read_json(path: str, what: str) -> dict:
    """A JSON object from ``path`` (a UTF-8 byte-order mark is skipped)."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            content = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{what} {path} is not valid JSON ({exc}); re-download it") from exc
    if not isinstance(content, dict):
        raise DatasetError(f"{what} {path} holds a JSON {type(content).__name__}; it must be a JSON object "
                           f"with 'images', 'annotations' and 'categories'")
    return content


def check_ids_and_names(content: dict, path: str) -> None:
    """Each category has an integer 'id' and a string 'name'; image ids, category ids and category names
    are each listed once (a repeated one would merge two images' or two classes' labels)."""
    categories = [c for c in content.get("categories") or [] if isinstance(c, dict)]
    for index, category in enumerate(categories):
        cat_id, name = category.get("id"), category.get("name")
        if isinstance(cat_id, bool) or not isinstance(cat_id, int):
            raise DatasetError(f"{path}: categories[{index}] (name {name!r}) has 'id' {cat_id!r}; category "
                               f"ids must be JSON integers (1, not \"1\"): fix the file")
        if not isinstance(name, str):
            raise DatasetError(f"{path}: categories[{index}] (id {cat_id}) has 'name' {name!r}; every "
                               f"category needs its class name as a string: fix the file")
    images = [i.get("id") for i in content.get("images") or [] if isinstance(i, dict)]
    for what, values, key in (("image ids", images, "images"),
                              ("category ids", [c["id"] for c in categories], "categories"),
                              ("category names", [c["name"] for c in categories], "categories")):
        repeated = sorted((v for v, n in Counter(values).items() if n > 1), key=str)
        if repeated:
            raise DatasetError(f"{path}: {what} {repeated[:10]} are listed more than once in '{key}'; each "
                               f"must be listed once (a repeat would merge two images' or classes' labels): "
                               f"fix the file")


# sys.stdout is one per process: two threads redirecting it at once would restore each other's buffer and
# silence every later print (reproduce.py reads labels from two cell threads). One redirect at a time.
_STDOUT_LOCK = threading.Lock()


def load_coco_api(ann_file: str, verbose: bool = False):
    from pycocotools.coco import COCO

    require_file(ann_file, "COCO annotation file", "Pass the instances JSON (e.g. "
                 "annotations/instances_train2014.json under --data, or train.json under --metadata)")
    content = read_json(ann_file, "COCO annotation file")
    check_ids_and_names(content, ann_file)
    coco = COCO()
    coco.dataset = content
    try:
        with _STDOUT_LOCK, contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (AssertionError, TypeError, KeyError) as exc:
        raise DatasetError(f"COCO annotation file {ann_file} is not a COCO instances file ({exc!r}); it "
                           f"must be a JSON object with 'images', 'annotations' and 'categories'") from exc
    return coco


class CocoDetection(MultiLabelImageDataset):
    """COCO multi-label dataset with the paper code's constructor, ``ids`` and ``(image, target)`` items."""

    def __init__(self, root: str, annFile: str, transform=None, target_transform=None,
                 skip_bad_images: bool = False, verbose: bool = False):
        self.root = root
        self.ann_file = annFile
        self.transform = transform
        self.target_transform = target_transform
        require_dir(root, "COCO image folder", f"Pass the folder holding the images of {annFile} "
                    f"(e.g. --data DIR with DIR/train2014 and DIR/val2014)")
        self.coco = load_coco_api(annFile, verbose=verbose)

        category_ids = sorted(self.coco.cats.keys())
        if not category_ids:
            raise DatasetError(f"COCO annotation file {annFile} has no 'categories'; it must list the "
                               f"classes (id, name)")
        self.category_ids = category_ids
        self.cat2cat = {cat_id: column for column, cat_id in enumerate(category_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in category_ids]

        self.image_ids = list(self.coco.imgToAnns.keys())
        self.labels = LabelMatrix.from_dense(self._multi_hot(self.image_ids))
        self.image_paths = [self._image_path(img_id) for img_id in self.image_ids]
        self._finish_init(annFile, skip_bad_images)

    @property
    def ids(self) -> list:
        """COCO image ids, one per row (the paper code's name)."""
        return self.image_ids

    @ids.setter
    def ids(self, value) -> None:
        """Keeps those images (as the paper's code may do), in that order, with their labels and paths."""
        row_of = {img_id: row for row, img_id in enumerate(self.image_ids)}
        value = list(value)
        unknown = [img_id for img_id in value if img_id not in row_of]
        if unknown:
            raise KeyError(f"{self.ann_file}: image id(s) {unknown[:5]} are not in this dataset; assign a "
                           f"selection of dataset.ids (or use dataset.subset(rows))")
        self._keep_rows(np.asarray([row_of[img_id] for img_id in value], dtype=np.int64))

    def _multi_hot(self, image_ids: list) -> np.ndarray:
        row_of = {img_id: row for row, img_id in enumerate(image_ids)}
        labels = np.zeros((len(image_ids), len(self.cat2cat)), dtype=np.int8)
        for ann in self.coco.dataset.get("annotations", []):
            try:
                labels[row_of[ann["image_id"]], self.cat2cat[ann["category_id"]]] = 1
            except KeyError as exc:
                raise DatasetError(f"COCO annotation file {self.ann_file}: annotation {ann.get('id')} has "
                                   f"image_id/category_id {exc} that is not listed in 'images'/'categories'; "
                                   f"the file is inconsistent") from None
        return labels

    def _image_path(self, img_id) -> str:
        image = self.coco.imgs.get(img_id)
        if image is None or "file_name" not in image:
            raise DatasetError(f"COCO annotation file {self.ann_file}: image {img_id} has annotations but no "
                               f"entry with a 'file_name' in 'images'; the file is inconsistent")
        return os.path.join(self.root, image["file_name"])
