"""LVIS v1 reader on a tiny fixture with a hand-written expected label matrix."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from src.data import build_split
from src.data.labels import DatasetError
from src.data.lvis import LVISDataset, lvis_dataset

CATEGORIES = [{"id": 7, "name": "zebra", "frequency": "f"}, {"id": 2, "name": "abacus", "frequency": "r"},
              {"id": 4, "name": "kite", "frequency": "c"}, {"id": 9, "name": "yak", "frequency": "r"}]
# Columns in id order: abacus(2), kite(4), zebra(7), yak(9).
IMAGES = [
    {"id": 101, "coco_url": "http://images.cocodataset.org/train2017/000000000101.jpg",
     "neg_category_ids": [9], "not_exhaustive_category_ids": [4]},
    {"id": 102, "coco_url": "http://images.cocodataset.org/train2017/000000000102.jpg",
     "neg_category_ids": [], "not_exhaustive_category_ids": []},  # nothing known: dropped
    {"id": 103, "coco_url": "http://images.cocodataset.org/val2017/000000000103.jpg",
     "neg_category_ids": [2, 4], "not_exhaustive_category_ids": []},
]
ANNOTATIONS = [{"id": 1, "image_id": 101, "category_id": 7}, {"id": 2, "image_id": 101, "category_id": 7},
               {"id": 3, "image_id": 103, "category_id": 9}]
EXPECTED = np.array([[-1, 1, 1, 0],
                     [0, 0, -1, 1]], dtype=np.int8)


@pytest.fixture
def lvis_root(tmp_path):
    content = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "lvis_v1_train.json").write_text(json.dumps(content))
    for folder, image_id in (("train2017", 101), ("train2017", 102), ("val2017", 103)):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (10, 10), (0, 90, 0)).save(tmp_path / folder / f"{image_id:012d}.jpg")
    return tmp_path


def test_labels_classes_frequency_and_paths(lvis_root):
    ds = lvis_dataset("train", data=str(lvis_root))
    assert isinstance(ds, LVISDataset) and ds.labels.is_sparse
    assert ds.class_names == ["abacus", "kite", "zebra", "yak"]
    assert ds.frequency_groups == ["r", "c", "f", "r"]
    assert ds.image_ids == [101, 103]
    np.testing.assert_array_equal(ds.labels.to_dense(), EXPECTED)
    assert ds.image_paths[1] == str(lvis_root / "val2017" / "000000000103.jpg")
    _, target = ds[1]
    torch.testing.assert_close(target, torch.tensor([0.0, 0.0, -1.0, 1.0]))


def test_metadata_folder_comes_first(lvis_root, tmp_path):
    content = json.loads((lvis_root / "annotations" / "lvis_v1_train.json").read_text())
    content["images"] = content["images"][2:]  # only image 103 and its annotation
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] == 103]
    metadata = tmp_path / "meta"
    metadata.mkdir()
    (metadata / "lvis_v1_train.json").write_text(json.dumps(content))
    ds = build_split("lvis", "train", data=str(lvis_root), metadata=str(metadata))
    assert ds.ann_file == str(metadata / "lvis_v1_train.json") and ds.image_ids == [103]
    np.testing.assert_array_equal(ds.labels.to_dense(), EXPECTED[1:])


def test_bad_files(lvis_root):
    with pytest.raises(DatasetError, match="lvis_v1_val.json"):
        lvis_dataset("val", data=str(lvis_root))
    content = json.loads((lvis_root / "annotations" / "lvis_v1_train.json").read_text())
    content["categories"][0].pop("frequency")
    (lvis_root / "nofreq.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="nofreq.json: every category needs 'frequency'"):
        LVISDataset(str(lvis_root), str(lvis_root / "nofreq.json"))
    content = json.loads((lvis_root / "annotations" / "lvis_v1_train.json").read_text())
    content["annotations"].append({"id": 9, "image_id": 101, "category_id": 99})
    (lvis_root / "badcat.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="badcat.json: image or category id 99"):
        LVISDataset(str(lvis_root), str(lvis_root / "badcat.json"))
