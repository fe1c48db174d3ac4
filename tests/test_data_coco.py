"""CocoDetection, build_split, apply_partial_labels and build_datasets on tiny COCO-format fixtures."""

import argparse
import json
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision import transforms

import src.data
from src.args import data_parser, partial_labels_parser
from src.data import (
    DatasetError,
    apply_partial_labels,
    build_datasets,
    build_datasets_with_summary,
    build_split,
    describe_simulation,
    resolve_coco_files,
)
from src.data.base import SkippedImagesWarning
from src.data.coco import CocoDetection
from src.data.image_io import ImageReadError
from src.data.partial_labels import class_statistics, simulate_partial_labels
from src.data.transforms import build_val_transform

# Categories listed out of id order on purpose: columns must follow ascending id (3 'cat', 5 'dog', 9 'car').
CATEGORIES = [{"id": 5, "name": "dog"}, {"id": 9, "name": "car"}, {"id": 3, "name": "cat"}]
# image id -> categories of its annotations; image 4 has none and must be dropped.
ANNOTATED = [(20, [5, 5, 3]), (10, [9]), (30, [3, 9, 5])]
EXPECTED_IDS = [20, 10, 30]
EXPECTED = np.array([[1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=np.int8)


def coco_json(split: str) -> dict:
    images = [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg", "width": 12, "height": 10}
              for i in (10, 20, 30, 4)]
    annotations, ann_id = [], 1
    for img_id, cats in ANNOTATED:
        for cat in cats:
            annotations.append({"id": ann_id, "image_id": img_id, "category_id": cat, "area": 4.0,
                                "bbox": [0, 0, 2, 2], "iscrowd": 0})
            ann_id += 1
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_images(folder, split):
    folder.mkdir(parents=True, exist_ok=True)
    for i in (10, 20, 30, 4):
        Image.new("RGB", (12, 10), (i, 2 * i, 3 * i)).save(folder / f"COCO_{split}2014_{i:012d}.jpg")


@pytest.fixture
def coco_root(tmp_path):
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(coco_json(split)))
        write_images(tmp_path / f"{split}2014", split)
    return tmp_path


def test_labels_ids_and_classes(coco_root):
    ds = CocoDetection(str(coco_root / "train2014"), str(coco_root / "annotations/instances_train2014.json"))
    assert ds.ids == EXPECTED_IDS
    assert ds.class_names == ["cat", "dog", "car"]
    assert ds.classes == {0: "cat", 1: "dog", 2: "car"}
    np.testing.assert_array_equal(ds.labels.to_dense(), EXPECTED)
    assert len(ds) == 3 and ds.image_paths[0].endswith("COCO_train2014_000000000020.jpg")


def test_getitem_returns_tensor_and_float_target(coco_root):
    ds = CocoDetection(str(coco_root / "train2014"), str(coco_root / "annotations/instances_train2014.json"),
                       transform=build_val_transform(8))
    image, target = ds[1]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert target.dtype == torch.float32
    torch.testing.assert_close(target, torch.tensor([0.0, 0.0, 1.0]))


def test_set_labels_and_subset(coco_root):
    ds = CocoDetection(str(coco_root / "train2014"), str(coco_root / "annotations/instances_train2014.json"))
    partial = np.array([[1, -1, 0], [-1, -1, 1], [-1, 1, -1]])
    ds.set_labels(partial)
    torch.testing.assert_close(ds[0][1], torch.tensor([1.0, -1.0, 0.0]))
    sub = ds.subset([2, 0])
    assert sub.ids == [30, 20] and ds.ids == EXPECTED_IDS
    np.testing.assert_array_equal(sub.labels.to_dense(), partial[[2, 0]])
    with pytest.raises(DatasetError, match="3 images x 3 classes"):
        ds.set_labels(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="-1 \\(un-annotated\\)"):
        ds.set_labels(np.full((3, 3), 7))


def test_paper_layout_and_standard_layout_resolve(tmp_path, coco_root):
    metadata = tmp_path / "meta"
    metadata.mkdir()
    (metadata / "train.json").write_text(json.dumps(coco_json("train")))
    images = tmp_path / "flat"
    write_images(images, "train")
    root, ann = resolve_coco_files(str(images), str(metadata), "train")
    assert (root, ann) == (str(images), str(metadata / "train.json"))
    root, ann = resolve_coco_files(str(coco_root), str(metadata), "train")
    assert root == str(coco_root / "train2014")
    assert ann == str(coco_root / "annotations" / "instances_train2014.json")
    with pytest.raises(DatasetError, match="val.json"):
        resolve_coco_files(str(images), str(metadata), "val")


def test_missing_files_and_folders_name_the_path(coco_root):
    ann = str(coco_root / "annotations/instances_train2014.json")
    with pytest.raises(DatasetError, match="nope.json"):
        CocoDetection(str(coco_root / "train2014"), str(coco_root / "nope.json"))
    with pytest.raises(DatasetError, match="image folder not found: .*missing_dir"):
        CocoDetection(str(coco_root / "missing_dir"), ann)
    (coco_root / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json is not valid JSON"):
        CocoDetection(str(coco_root / "train2014"), str(coco_root / "bad.json"))


def test_empty_dataset_is_an_error(coco_root):
    empty = dict(coco_json("train"), annotations=[])
    (coco_root / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(DatasetError, match="empty.json: the dataset is empty"):
        CocoDetection(str(coco_root / "train2014"), str(coco_root / "empty.json"))


def test_bad_images_are_one_error_at_start_up_or_skipped_with_warning(coco_root):
    folder = coco_root / "train2014"
    (folder / "COCO_train2014_000000000010.jpg").write_bytes(b"not a jpeg")
    (folder / "COCO_train2014_000000000030.jpg").unlink()
    ann = str(coco_root / "annotations/instances_train2014.json")
    with pytest.raises(DatasetError) as error:  # at construction, not when the DataLoader first reads
        CocoDetection(str(folder), ann)
    message = str(error.value)
    assert message.startswith(f"{ann}: 2 of 3 image files are missing or cannot be decoded: ")
    assert "000000000010.jpg (UnidentifiedImageError: cannot identify image file)" in message
    assert "000000000030.jpg (not found)" in message
    assert message.endswith("or pass --skip_bad_images to train without them")
    assert "\n" not in message
    with pytest.warns(SkippedImagesWarning, match="skipped 2 of 3 images"):
        ds = CocoDetection(str(folder), ann, skip_bad_images=True)
    assert ds.ids == [20]
    np.testing.assert_array_equal(ds.labels.to_dense(), EXPECTED[[0]])


def test_pycocotools_prints_are_silenced(coco_root, capsys):
    CocoDetection(str(coco_root / "train2014"), str(coco_root / "annotations/instances_train2014.json"))
    assert capsys.readouterr().out == ""


def test_loading_in_two_threads_at_once_leaves_stdout_working(coco_root, monkeypatch):
    """reproduce.py reads labels in two cell threads: their silenced createIndex must not swap sys.stdout
    (two overlapping redirects restore each other's buffer, and every later print would be lost)."""
    original, barrier = sys.stdout, threading.Barrier(2)
    real_create = COCO.createIndex

    def slow_create_index(self):  # widen the window in which the two loads overlap
        print("creating index...")
        time.sleep(0.05)
        real_create(self)

    monkeypatch.setattr(COCO, "createIndex", slow_create_index)

    def load():
        barrier.wait()
        CocoDetection(str(coco_root / "train2014"), str(coco_root / "annotations/instances_train2014.json"))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sys.stdout is original


def data_args(*argv: str):
    """The namespace train.py reads the data from (the real parsers, so no attribute is missing)."""
    parser = argparse.ArgumentParser(parents=[data_parser(), partial_labels_parser()])
    return parser.parse_args(["--metadata", "", *argv])


def fake_simulation(monkeypatch, calls):
    """Replace the simulation and the file reader where src.data uses them; record their calls."""

    def simulate_dataset(dataset, mode, param, seed):
        calls.append(("simulate", mode, param, seed))
        labels = dataset.labels.to_dense()
        labels[:, 0] = -1
        dataset.set_labels(labels)
        return {"fake_summary": mode}

    def load_partial_labels(path, class_names=None, image_ids=None, full_labels=None):
        calls.append(("load", path, tuple(class_names), tuple(image_ids)))
        np.testing.assert_array_equal(full_labels.to_dense(), EXPECTED)  # the dataset's own labels
        return np.full((len(image_ids), len(class_names)), -1, dtype=np.int8)

    monkeypatch.setattr(src.data, "simulate_dataset", simulate_dataset)
    monkeypatch.setattr(src.data, "load_partial_labels", load_partial_labels)


def test_build_datasets_wires_transforms_and_partial_labels(coco_root, monkeypatch, capsys):
    calls = []
    fake_simulation(monkeypatch, calls)
    args = data_args("--data", str(coco_root), "--image-size", "16", "--simulate_partial_type", "fpc",
                     "--simulate_partial_param", "1", "--seed", "4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val, summary = build_datasets_with_summary(args)
    assert calls == [("simulate", "fpc", 1.0, 4)] and summary == {"fake_summary": "fpc"}
    assert capsys.readouterr().out == ""  # the caller reports the draw, not the library
    assert train.image_paths[0].startswith(str(coco_root / "train2014"))
    assert val.image_paths[0].startswith(str(coco_root / "val2014"))
    np.testing.assert_array_equal(train.labels.to_dense(), np.where(np.arange(3) == 0, -1, EXPECTED))
    np.testing.assert_array_equal(val.labels.to_dense(), EXPECTED)  # the val set keeps its full labels
    # val: exactly torchvision's Resize + ToTensor of the decoded image; train: the augmenting pipeline
    reference = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()])
    torch.testing.assert_close(val[0][0], reference(Image.open(val.image_paths[0]).convert("RGB")),
                               rtol=0, atol=0)
    assert [type(step).__name__ for step in train.transform.transforms] == [
        "Resize", "CutoutPIL", "RandAugment", "ToTensor01"]
    assert train.transform.draft_size == (16, 16) and val.transform.draft_size == (16, 16)

    train_only, _ = build_datasets(args)  # the 2-tuple form draws the same labels
    np.testing.assert_array_equal(train_only.labels.to_dense(), train.labels.to_dense())

    args = data_args("--data", str(coco_root), "--image-size", "16", "--partial_labels", "p.npz",
                     "--no-jpeg_draft")
    train, _, summary = build_datasets_with_summary(args)
    assert calls[-1] == ("load", "p.npz", ("cat", "dog", "car"), tuple(EXPECTED_IDS)) and summary is None
    assert (train.labels.to_dense() == -1).all()
    assert train.transform.draft_size is None
    args.simulate_partial_type = "rps"
    with pytest.raises(ValueError, match="not both"):
        build_datasets(args)


def test_apply_partial_labels_returns_the_summary_and_prints_nothing(coco_root, capsys):
    ds = build_split("coco", "train", data=str(coco_root))
    summary = apply_partial_labels(ds, simulate_type="fpc", simulate_param=1, seed=3)
    expected = simulate_partial_labels(EXPECTED, "fpc", 1, 3)
    np.testing.assert_array_equal(ds.labels.to_dense(), expected)
    assert summary == class_statistics(EXPECTED, expected).summary
    assert summary["positives_original"] == 6 and summary["positives_kept"] == 3  # one per class
    assert capsys.readouterr().out == ""
    assert describe_simulation("fpc", 1, 3, summary).startswith(
        "Simulated partial labels: mode fix_per_class, param 1, seed 3: annotated 100.0% -> ")
    untouched = build_split("coco", "train", data=str(coco_root))
    assert apply_partial_labels(untouched) is None
    np.testing.assert_array_equal(untouched.labels.to_dense(), EXPECTED)


def test_build_split_rejects_unknown_dataset_types_and_splits(coco_root):
    with pytest.raises(ValueError, match="dataset_type must be one of"):
        build_split("imagenet", "train", data=str(coco_root))
    with pytest.raises(ValueError, match="split must be one of"):
        build_split("coco", "test", data=str(coco_root))


def test_assigning_ids_keeps_those_images_with_their_labels(coco_root):
    ds = CocoDetection(str(coco_root / "train2014"), str(coco_root / "annotations/instances_train2014.json"))
    ds.ids = [30, 20]  # the paper's code exposes `ids`; assigning it must not desynchronise the rows
    assert len(ds) == 2 and ds.ids == [30, 20]
    np.testing.assert_array_equal(ds.labels.to_dense(), EXPECTED[[2, 0]])
    assert ds.image_paths[0].endswith("COCO_train2014_000000000030.jpg")
    with pytest.raises(KeyError, match="image id\\(s\\) \\[10\\] are not in this dataset"):
        ds.ids = [10]


def test_truncated_image_passes_the_header_scan_and_is_replaced_at_read(coco_root):
    folder = coco_root / "train2014"
    bad = folder / "COCO_train2014_000000000010.jpg"  # row 1
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[:5000])  # header intact, most pixel data cut
    ann = str(coco_root / "annotations/instances_train2014.json")
    ds = CocoDetection(str(folder), ann)
    with pytest.raises(ImageReadError, match="000000000010.jpg.*--skip_bad_images"):
        ds[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the start-up scan sees nothing wrong
        ds = CocoDetection(str(folder), ann, skip_bad_images=True)
    assert len(ds) == 3
    with pytest.warns(SkippedImagesWarning, match="skipped at read.*000000000010.jpg") as record:
        image, target = ds[1]
    assert "--skip_bad_images to drop" not in str(record[0].message)  # no advice to set what is set
    # the next row's image *and* target come together
    torch.testing.assert_close(target, torch.from_numpy(EXPECTED[2].astype(np.float32)))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(ds[2][0]))


def test_scan_images_finds_the_same_bad_files_in_one_thread_or_many(tmp_path, monkeypatch):
    import src.data.image_io as image_io

    paths = []
    for i in range(9):
        path = tmp_path / f"{i}.png"
        if i in (2, 7):
            path.write_bytes(b"garbage")
        elif i != 4:  # 4 is missing
            Image.new("RGB", (3, 2)).save(path)
        paths.append(str(path))
    expected = [i not in (2, 4, 7) for i in range(9)]
    monkeypatch.setattr(image_io, "_SCAN_CHUNK", 2)  # several chunks, so the pool really runs
    assert image_io.scan_images(paths, num_threads=1).tolist() == expected
    assert image_io.scan_images(paths, num_threads=4).tolist() == expected
    monkeypatch.setattr(image_io, "IO_BOUND_US", {True: 0.0, False: 0.0})  # "slow disk": automatic threads
    assert image_io.scan_images(paths).tolist() == expected
    assert image_io.scan_images(paths, header=False).tolist() == [i != 4 for i in range(9)]
