"""Bad inputs to the data and model libraries: one test per case, tiny data generated here.

| input | what happens now | test |
| --- | --- | --- |
| 16-bit greyscale PNG | scaled >> 8 (was clipped: solid white) | test_16_bit_png_* |
| 32-bit int / float greyscale | scaled by the narrowest range holding the values | test_int_and_float_* |
| missing image (COCO / embedded) | one DatasetError at construction, file and flag | test_missing_image_* |
| unreadable image, --skip_bad_images | dropped, one warning: count and first files | test_undecodable_* |
| every image missing | error names --data and the image folder | test_wrong_image_root_* |
| missing image (OpenImages, LVIS) | same start-up error | test_openimages_missing_*, test_lvis_* |
| bad file found in a DataLoader worker | one line, not the worker's traceback | test_error_raised_in_a_* |
| huge dataset (> HEADER_CHECK_LIMIT) | existence at start-up, header at read | test_over_the_header_* |
| --partial_labels of another dataset | refused: labels contradict / fingerprint | test_partial_labels_* |
| partial label file without fingerprint | loads, its labels are still checked | test_old_partial_label_* |
| --model-path of another architecture | refused under half the backbone matched | test_backbone_* |
| .pth that runs code when unpickled | refused naming --unsafe_pickle | test_checkpoint_that_runs_* |
| OpenImages conflicts / duplicates | one-line describe_load_stats() | test_openimages_conflicts_* |
| data.csv rows without labels | dropped and counted, as the official CSV | test_processed_rows_* |
| OpenImages without --metadata | falls back to --data; error names files and flag | test_openimages_label_* |
| malformed data.csv | DatasetError naming the file, file closed | test_malformed_data_csv_* |
"""

from __future__ import annotations

import builtins
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch._utils import ExceptionWrapper

import src.data.base
from src.data import apply_partial_labels, build_split
from src.data.base import SkippedImagesWarning
from src.data.embedded import generate_embedded_dataset
from src.data.image_io import ImageReadError, load_rgb
from src.data.labels import DatasetError
from src.data.lvis import lvis_dataset
from src.data.openimages import OpenImagesDataset, openimages_dataset, read_processed_labels
from src.data.partial_labels import (
    FINGERPRINT_KEY,
    label_fingerprint,
    load_partial_labels,
    read_partial_label_file,
    save_partial_labels,
    simulate_partial_labels,
)
from src.models import (
    CheckpointError,
    create_model,
    load_model,
    load_pretrained_backbone,
    read_pth,
)

TRAIN_JSON = "annotations/instances_train2014.json"


def embedded_copy(source, tmp_path):
    """A private copy of the session's tiny embedded dataset (COCO layout), safe to damage."""
    target = tmp_path / "embedded"
    shutil.copytree(source, target)
    return target


def train_image(root, image_id: int):
    return root / "train2014" / f"embedded_train2014_{image_id:06d}.png"


# ------------------------------------------------------------------------------------ (a) bit depth
def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    ramp = (np.arange(16 * 32, dtype=np.uint32).reshape(16, 32) * 127).astype(np.uint16)  # 0 .. 64897
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"  # really a 16-bit file
    decoded = np.asarray(load_rgb(str(path)))
    expected = (ramp >> 8).astype(np.uint8)  # the 8-bit picture of the same data
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], expected)
    assert len(np.unique(decoded)) > 200  # not a solid white image


def test_int_and_float_greyscale_images_are_scaled_by_the_range_that_holds_them(tmp_path):
    cases = {
        "sixteen_as_int": (np.array([[0, 256, 65535]], dtype=np.int32), "I", [0, 1, 255]),
        "eight_as_int": (np.array([[0, 17, 255]], dtype=np.int32), "I", [0, 17, 255]),
        "wide_int": (np.array([[-100, 0, 100_000]], dtype=np.int32), "I",
                     [0, round(100 * 255 / 100_100), 255]),
        "unit_float": (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F", [0, 128, 255]),
    }
    for name, (values, mode, expected) in cases.items():
        path = tmp_path / f"{name}.tif"
        Image.fromarray(values, mode=mode).save(path)
        assert Image.open(path).mode == mode
        decoded = np.asarray(load_rgb(str(path)))
        np.testing.assert_array_equal(decoded[0, :, 0], expected, err_msg=name)


def test_16_bit_png_in_a_dataset_reaches_the_pipeline_scaled(embedded_data_dir, tmp_path):
    root = embedded_copy(embedded_data_dir, tmp_path)
    grey = np.asarray(Image.open(train_image(root, 1)).convert("L")).astype(np.uint16)
    Image.fromarray(grey * 257).save(train_image(root, 1))  # 8-bit v -> 16-bit v*257, v*257 >> 8 == v
    dataset = build_split("coco", "train", data=str(root))
    image, _ = dataset[0]
    assert dataset.image_ids[0] == 1
    np.testing.assert_array_equal(np.asarray(image)[..., 1], grey.astype(np.uint8))


# ------------------------------------------------------------------------------ (b) start-up check
def test_missing_image_is_one_error_at_start_up_naming_the_file_and_the_flag(embedded_data_dir, tmp_path):
    root = embedded_copy(embedded_data_dir, tmp_path)
    train_image(root, 7).unlink()
    with pytest.raises(DatasetError) as error:
        build_split("coco", "train", data=str(root))
    message = str(error.value)
    assert message.startswith(f"{root / TRAIN_JSON}: 1 of 96 image files are missing or cannot be decoded: ")
    assert f"{train_image(root, 7)} (not found)" in message and "--skip_bad_images" in message
    assert "\n" not in message


def test_undecodable_images_with_skip_are_dropped_with_one_warning(embedded_data_dir, tmp_path):
    root = embedded_copy(embedded_data_dir, tmp_path)
    train_image(root, 3).write_bytes(b"")
    train_image(root, 5).write_bytes(b"\x89PNG but not really")
    with pytest.warns(SkippedImagesWarning) as record:
        dataset = build_split("coco", "train", data=str(root), skip_bad_images=True)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 of 96 images that are missing or cannot be decoded (--skip_bad_images)" in message
    assert "embedded_train2014_000003.png (UnidentifiedImageError" in message
    assert "embedded_train2014_000005.png" in message
    assert len(dataset) == 94 and 3 not in dataset.image_ids and 5 not in dataset.image_ids


def test_wrong_image_root_names_data_and_the_folder(embedded_data_dir, tmp_path):
    root = embedded_copy(embedded_data_dir, tmp_path)
    for path in (root / "train2014").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=r"none of the 96 image files can be read .*check that --data"):
        build_split("coco", "train", data=str(root))


def test_openimages_missing_image_is_an_error_at_start_up(tmp_path):
    (tmp_path / "data.csv").write_text("filepath,label,label_neg,split_name\n"
                                       "train/a.jpg,['/m/0a'],[],train\ntrain/b.jpg,['/m/0b'],[],train\n")
    torch.save({"/m/0a": "Apple", "/m/0b": "Bus"}, tmp_path / "mid_to_classes.pth")
    (tmp_path / "train").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a.jpg")
    with pytest.raises(DatasetError, match=r"data.csv: 1 of 2 image files .*train/b.jpg \(not found\).*"
                                           r"--skip_bad_images"):
        openimages_dataset("train", data=str(tmp_path))


def test_lvis_missing_image_is_an_error_at_start_up(tmp_path):
    content = {"categories": [{"id": 1, "name": "kite", "frequency": "f"}],
               "images": [{"id": i, "coco_url": f"http://x/train2017/{i:012d}.jpg"} for i in (1, 2)],
               "annotations": [{"id": i, "image_id": i, "category_id": 1} for i in (1, 2)]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "lvis_v1_train.json").write_text(json.dumps(content))
    (tmp_path / "train2017").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train2017" / "000000000001.jpg")
    with pytest.raises(DatasetError, match=r"lvis_v1_train.json: 1 of 2 image files .*000000000002.jpg "
                                           r"\(not found\)"):
        lvis_dataset("train", data=str(tmp_path))


def test_error_raised_in_a_dataloader_worker_is_one_line(tmp_path):
    try:
        load_rgb(str(tmp_path / "gone.jpg"))
    except ImageReadError:
        wrapper = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(ImageReadError) as error:
        wrapper.reraise()  # what the DataLoader does in the main process
    assert str(error.value) == (f"image file not found: {tmp_path / 'gone.jpg'}. Check --data (the image "
                                f"root), or pass --skip_bad_images to drop missing images")


def test_over_the_header_limit_only_existence_is_checked_and_a_bad_header_fails_at_read(
        embedded_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(src.data.base, "HEADER_CHECK_LIMIT", 10)  # "huge" = more than 10 images
    root = embedded_copy(embedded_data_dir, tmp_path)
    train_image(root, 2).write_bytes(b"not an image")
    dataset = build_split("coco", "train", data=str(root))  # the start-up scan only stats the files
    with pytest.raises(ImageReadError, match=r"cannot decode image .*000002.png.*--skip_bad_images"):
        dataset[1]
    train_image(root, 4).unlink()
    with pytest.raises(DatasetError, match=r"1 of 96 image files are missing: .*000004.png \(not found\)"):
        build_split("coco", "train", data=str(root))


# ---------------------------------------------------------------------------- (c) partial labels
@pytest.fixture(scope="module")
def two_embedded_sets(tmp_path_factory):
    """Two embedded datasets with the same image ids (1..40) and class names, different images."""
    roots = []
    for seed in (11, 12):
        root = tmp_path_factory.mktemp(f"embedded_seed{seed}")
        generate_embedded_dataset(root, n_train=40, n_test=4, image_size=16, seed=seed)
        roots.append(root)
    return roots


def test_partial_labels_of_another_dataset_with_the_same_ids_and_names_are_refused(two_embedded_sets,
                                                                                  tmp_path):
    mine, other = (build_split("coco", "train", data=str(root)) for root in two_embedded_sets)
    assert list(mine.image_ids) == list(other.image_ids) and mine.class_names == other.class_names
    full = other.labels.to_dense()
    path = save_partial_labels(tmp_path / "other.npz", simulate_partial_labels(full, "fpc", 5, 0),
                               other.class_names, other.image_ids, {"annotation_file": other.ann_file},
                               full_labels=full)
    with pytest.raises(ValueError) as error:
        apply_partial_labels(mine, partial_labels=path)
    message = str(error.value)
    assert message.startswith(f"partial label file {path} does not fit this dataset: ")
    assert "contradict the dataset's annotations (image 1, class " in message
    assert f"(the file was made from {other.ann_file})" in message and "--partial_labels" in message
    untouched = build_split("coco", "train", data=str(two_embedded_sets[0])).labels
    assert mine.labels.equals(untouched)


def test_partial_labels_whose_fingerprint_differs_are_refused_even_when_kept_labels_agree(tmp_path):
    names, ids = ["a", "b", "c"], [1, 2, 3, 4]
    dataset_full = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.int8)
    other_full = dataset_full.copy()
    other_full[3, 2] = 1  # another dataset: one more positive ...
    partial = other_full.copy()
    partial[3, 2] = -1  # ... that its partial labels happen to drop
    path = save_partial_labels(tmp_path / "p.npz", partial, names, ids, full_labels=other_full)
    assert read_partial_label_file(path).meta[FINGERPRINT_KEY] == label_fingerprint(other_full, names)
    with pytest.raises(ValueError, match=r"p.npz was simulated from other full labels than this dataset's "
                                         r"\(fingerprint .*--partial_labels"):
        load_partial_labels(path, names, ids, full_labels=dataset_full)
    np.testing.assert_array_equal(load_partial_labels(path, names, ids, full_labels=other_full), partial)


def test_old_partial_label_file_without_fingerprint_loads_and_its_positives_are_checked(tmp_path):
    names, ids = ["a", "b"], [1, 2, 3]
    full = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.int8)
    partial = np.array([[1, -1], [-1, 1], [-1, -1]], dtype=np.int8)
    path = save_partial_labels(tmp_path / "old.npz", partial, names, ids, {"mode": "fpc"})
    assert FINGERPRINT_KEY not in read_partial_label_file(path).meta
    np.testing.assert_array_equal(load_partial_labels(path, names, ids, full_labels=full), partial)
    wrong = full.copy()
    wrong[1, 1] = 0  # the file says image 2 has class b, this dataset says it has not
    with pytest.raises(ValueError, match=r"1 of its 2 labels contradict .*image 2, class 'b': file 1, "
                                         r"dataset 0"):
        load_partial_labels(path, names, ids, full_labels=wrong)


# ------------------------------------------------------------------------------- (d) backbone share
def _backbone_keys(model) -> list[str]:
    return [k for k in model.state_dict()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]


def test_backbone_of_another_architecture_is_refused(tmp_path):
    model = create_model(model_name="test_resnet", num_classes=2)
    stray = model.state_dict()["bn1.weight"].clone()  # the one tensor another model happens to share
    other = {**timm.create_model("test_efficientnet", pretrained=False).state_dict(), "bn1.weight": stray}
    torch.save(other, tmp_path / "efficientnet.pth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_pretrained_backbone(model, tmp_path / "efficientnet.pth")
    n_backbone = len(_backbone_keys(model))
    assert str(error.value).startswith(f"'{tmp_path / 'efficientnet.pth'}' does not hold a test_resnet "
                                       f"backbone: only 1 of its {n_backbone} backbone tensors")
    assert "--model-path none" in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_backbone_loads_from_half_of_its_tensors_and_is_refused_below(tmp_path):
    source = create_model(model_name="test_resnet", num_classes=2).state_dict()
    model = create_model(model_name="test_resnet", num_classes=2)
    keys = _backbone_keys(model)
    half = math.ceil(len(keys) / 2)
    torch.save({k: source[k] for k in keys[:half]}, tmp_path / "half.pth")
    torch.save({k: source[k] for k in keys[:half - 1]}, tmp_path / "less.pth")
    report = load_pretrained_backbone(model, tmp_path / "half.pth")
    assert len(report.loaded) == half and len(report.missing) == len(keys) - half
    with pytest.raises(ValueError, match=f"only {half - 1} of its {len(keys)} backbone tensors"):
        load_pretrained_backbone(model, tmp_path / "less.pth")


# -------------------------------------------------------------------------------- (e) safe loading
class _RunsCodeWhenUnpickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")  # unpickling creates the marker file


def test_checkpoint_that_runs_code_on_unpickling_is_refused_unless_allowed(tmp_path):
    marker = tmp_path / "code_ran"
    model = create_model(model_name="test_resnet", num_classes=2)
    path = tmp_path / "crafted.pth"
    torch.save({"model": model.state_dict(), "payload": _RunsCodeWhenUnpickled(str(marker))}, path)
    for load in (lambda: read_pth(path), lambda: load_model(path),
                 lambda: load_pretrained_backbone(model, path)):
        with pytest.raises(CheckpointError) as error:
            load()
        assert "crafted.pth' was not loaded: it holds Python objects (io.open)" in str(error.value)
        assert "--unsafe_pickle" in str(error.value) and "execute code" in str(error.value)
        assert not marker.exists()
    with pytest.warns(UserWarning, match="--unsafe_pickle"):
        loaded = read_pth(path, allow_pickle=True)  # the payload is real: it runs when allowed
    loaded["payload"].close()
    assert marker.exists()


# ---------------------------------------------------------------------------------- (f) OpenImages
def _processed_release(folder, csv_text: str, mids=("/m/0a", "/m/0b")):
    (folder / "data.csv").write_text("filepath,label,label_neg,split_name\n" + csv_text)
    torch.save({m: m.upper() for m in mids}, folder / "mid_to_classes.pth")
    (folder / "train").mkdir(exist_ok=True)
    for line in csv_text.splitlines():
        Image.new("RGB", (8, 8)).save(folder / line.split(",")[0])


def test_openimages_conflicts_and_duplicates_are_reported_in_one_line(tmp_path):
    _processed_release(tmp_path, "train/a.jpg,\"['/m/0a', '/m/0a']\",\"['/m/0a', '/m/0b']\",train\n"
                                 "train/b.jpg,['/m/0b'],\"['/m/0a']\",train\n")
    dataset = openimages_dataset("train", data=str(tmp_path))
    np.testing.assert_array_equal(dataset.labels.to_dense(), [[1, 0], [0, 1]])
    assert dataset.describe_load_stats() == (
        f"{tmp_path / 'data.csv'}: 2 images x 2 classes; 1 (image, class) pairs listed both positive and "
        f"negative counted as positive, 1 repeated labels kept once, 0 labels of classes outside the class "
        f"list skipped, 0 images without a usable label dropped")


def test_processed_rows_without_usable_labels_are_dropped_and_counted(tmp_path):
    _processed_release(tmp_path, "train/a.jpg,['/m/0a'],[],train\ntrain/empty.jpg,[],[],train\n"
                                 "train/b.jpg,[],['/m/0b'],train\n")
    dataset = OpenImagesDataset.from_processed(str(tmp_path), str(tmp_path / "data.csv"),
                                               str(tmp_path / "mid_to_classes.pth"))
    assert [os.path.basename(p) for p in dataset.image_paths] == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(dataset.labels.to_dense(), [[1, -1], [-1, 0]])
    assert dataset.describe_load_stats().endswith("1 images without a usable label dropped")


def test_openimages_label_files_without_metadata_are_found_in_data_or_named(tmp_path):
    _processed_release(tmp_path, "train/a.jpg,['/m/0a'],[],train\n")
    coco_default = str(tmp_path / "data" / "COCO_2014")  # what --metadata defaults to
    dataset = build_split("openimages", "train", data=str(tmp_path), metadata=coco_default)
    assert len(dataset) == 1
    (tmp_path / "data.csv").unlink()
    with pytest.raises(DatasetError) as error:
        build_split("openimages", "train", data=str(tmp_path), metadata=coco_default)
    message = str(error.value)
    assert f"looked in {coco_default} (does not exist); {tmp_path} for data.csv + mid_to_classes.pth" \
        in message
    assert "*train-annotations-human-imagelabels*.csv + oidv6-classes-trainable.txt" in message
    assert "Pass --metadata DIR" in message


def _handles_open_on(path) -> int:
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count open files")
def test_malformed_data_csv_row_is_one_error_and_the_file_is_closed(tmp_path):
    csv = tmp_path / "data.csv"
    good = "".join(f"train/{i}.jpg,['/m/0a'],[],train\n" for i in range(120_000))  # > one pandas buffer
    csv.write_text("filepath,label,label_neg,split_name\ntrain/x.jpg,/m/0a,[],train\n" + good)
    with pytest.raises(DatasetError, match="data.csv: line 2, column label") as error:
        read_processed_labels(str(csv), ["/m/0a"], "train")
    assert error.value is not None and _handles_open_on(csv) == 0  # closed while the error is still alive
    csv.write_text("filepath,label,label_neg,split_name\ntrain/x.jpg,\"[],[],train\n")  # open quote
    with pytest.raises(DatasetError, match=r"data.csv: cannot be read as the processed release's data.csv"):
        read_processed_labels(str(csv), ["/m/0a"], "train")
