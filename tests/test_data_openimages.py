"""OpenImages readers on tiny fixtures of both formats, with hand-written expected label matrices."""

import numpy as np
import pytest
import torch
from PIL import Image

from src.data import build_split
from src.data.labels import DatasetError
from src.data.openimages import (
    OpenImagesDataset,
    SkippedLabelsWarning,
    build_label_csr,
    openimages_dataset,
    read_class_list,
)

MIDS = ["/m/0c", "/m/0a", "/m/0b"]  # class order = file order, deliberately not sorted
OFFICIAL_CSV = """ImageID,Source,LabelName,Confidence
bbb0000000000002,verification,/m/0a,1
aaa0000000000001,verification,/m/0c,0
aaa0000000000001,crowdsource-verification,/m/0a,1
aaa0000000000001,verification,/m/0zz,1
bbb0000000000002,verification,/m/0b,0
bbb0000000000002,crowdsource-verification,/m/0b,1
bbb0000000000002,verification,/m/0a,1
ccc0000000000003,verification,/m/0zz,0
"""
# Rows sorted by ImageID; ccc has only an unknown MID and is dropped. bbb/0b is both 0 and 1 -> 1.
OFFICIAL_IDS = [b"aaa0000000000001", b"bbb0000000000002"]
OFFICIAL_EXPECTED = np.array([[0, 1, -1], [-1, 1, 1]], dtype=np.int8)

PROCESSED_CSV = """filepath,label,label_neg,split_name
train/x1.jpg,"['/m/0a', '/m/0c']",[],train
val/y1.jpg,['/m/0b'],"['/m/0a']",val
train/x2.jpg,[],"['/m/0b','/m/0c']",train
train/x3.jpg,"[""/m/0b""]",[],train
"""
PROCESSED_TRAIN = np.array([[1, 1, -1], [0, -1, 0], [-1, -1, 1]], dtype=np.int8)


def write_jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (200, 10, 10)).save(path)


@pytest.fixture
def official(tmp_path):
    (tmp_path / "oidv6-train-annotations-human-imagelabels.csv").write_text(OFFICIAL_CSV)
    (tmp_path / "oidv6-classes-trainable.txt").write_text("\n".join(MIDS) + "\n")
    (tmp_path / "oidv6-class-descriptions.csv").write_text(
        "LabelName,DisplayName\n/m/0a,Apple\n/m/0b,\"Bus, red\"\n/m/0c,Cat\n/m/0zz,Other\n")
    for image_id in ("aaa0000000000001", "bbb0000000000002"):
        write_jpeg(tmp_path / "images" / "train" / f"{image_id}.jpg")
    return tmp_path


@pytest.fixture
def processed(tmp_path):
    (tmp_path / "data.csv").write_text(PROCESSED_CSV)
    torch.save({"/m/0c": "'Cat'", "/m/0a": "Apple", "/m/0b": "Bus"}, tmp_path / "mid_to_classes.pth")
    for name in ("train/x1.jpg", "train/x2.jpg", "train/x3.jpg", "val/y1.jpg"):
        write_jpeg(tmp_path / "images" / name)
    return tmp_path


def test_official_format_labels(official):
    with pytest.warns(SkippedLabelsWarning, match="imagelabels.csv: skipped 2 labels .*--unknown_mids error"):
        ds = OpenImagesDataset.from_official(
            str(official / "images"), str(official / "oidv6-train-annotations-human-imagelabels.csv"),
            str(official / "oidv6-classes-trainable.txt"), "train",
            descriptions_csv=str(official / "oidv6-class-descriptions.csv"))
    assert ds.labels.is_sparse
    assert ds.class_mids == MIDS and ds.class_names == ["Cat", "Apple", "Bus, red"]
    assert list(ds.image_ids) == OFFICIAL_IDS
    np.testing.assert_array_equal(ds.labels.to_dense(), OFFICIAL_EXPECTED)
    assert ds.load_stats == {"unknown_mid_labels": 2, "conflicting_labels": 1, "duplicate_labels": 1,
                             "images_without_labels": 1}  # ccc: only an unknown MID
    assert ds.image_paths[1] == str(official / "images" / "train" / "bbb0000000000002.jpg")
    image, target = ds[1]
    torch.testing.assert_close(target, torch.tensor([-1.0, 1.0, 1.0]))
    assert image.size == (20, 16)  # no transform: the decoded PIL image


def test_official_unknown_mids_can_be_an_error(official):
    with pytest.raises(DatasetError, match="2 labels use MIDs that are not in the class list.*/m/0zz"):
        OpenImagesDataset.from_official(
            str(official / "images"), str(official / "oidv6-train-annotations-human-imagelabels.csv"),
            str(official / "oidv6-classes-trainable.txt"), "train", unknown_mids="error")


def test_official_found_in_metadata_and_subset(official):
    folders = {"data": str(official / "images"), "metadata": str(official)}
    with pytest.warns(SkippedLabelsWarning, match="skipped 2 labels"):
        ds = openimages_dataset("train", data=folders["data"], metadata=folders["metadata"])
    assert ds.class_names == ["Cat", "Apple", "Bus, red"]  # names from the descriptions file found there
    np.testing.assert_array_equal(ds.labels.to_dense(), OFFICIAL_EXPECTED)
    sub = ds.subset([1])
    assert list(sub.image_ids) == OFFICIAL_IDS[1:] and sub.image_paths[0].endswith("bbb0000000000002.jpg")
    np.testing.assert_array_equal(sub.labels.to_dense(), OFFICIAL_EXPECTED[1:])
    with pytest.raises(DatasetError, match="validation-annotations-human-imagelabels"):
        openimages_dataset("val", data=folders["data"], metadata=folders["metadata"])
    with pytest.raises(DatasetError, match="test-annotations-human-imagelabels"):
        build_split("openimages", "val", **folders, openimages_val_split="test")
    with pytest.raises(DatasetError, match="2 labels use MIDs that are not in the class list"):
        build_split("openimages", "train", **folders, unknown_mids="error")
    # the val split of the official release is read from --openimages_val_split's CSV and folder
    (official / "oidv6-test-annotations-human-imagelabels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\nddd0000000000004,verification,/m/0b,1\n")
    write_jpeg(official / "images" / "test" / "ddd0000000000004.jpg")
    test = build_split("openimages", "val", **folders, openimages_val_split="test")
    assert test.image_paths[0] == str(official / "images" / "test" / "ddd0000000000004.jpg")
    np.testing.assert_array_equal(test.labels.to_dense(), [[-1, -1, 1]])


def test_processed_format_labels(processed):
    ds = OpenImagesDataset.from_processed(str(processed / "images"), str(processed / "data.csv"),
                                          str(processed / "mid_to_classes.pth"), split="train")
    assert ds.class_mids == ["/m/0c", "/m/0a", "/m/0b"] and ds.class_names == ["Cat", "Apple", "Bus"]
    np.testing.assert_array_equal(ds.labels.to_dense(), PROCESSED_TRAIN)
    assert ds.image_paths[2] == str(processed / "images" / "train" / "x3.jpg")
    val = build_split("openimages", "val", data=str(processed / "images"), metadata=str(processed))
    np.testing.assert_array_equal(val.labels.to_dense(), [[-1, 0, 1]])
    assert val.image_paths[0] == str(processed / "images" / "val" / "y1.jpg")


def test_processed_format_bad_inputs(processed):
    args = (str(processed / "images"), str(processed / "data.csv"), str(processed / "mid_to_classes.pth"))
    torch.save({"/m/0c": "Cat", "/m/0a": "Apple"}, processed / "mid_to_classes.pth")
    with pytest.raises(DatasetError, match="data.csv: .*MIDs that are not in the class list.*/m/0b"):
        OpenImagesDataset.from_processed(*args)
    with pytest.warns(SkippedLabelsWarning, match="data.csv: skipped 2 labels"):
        skipped = OpenImagesDataset.from_processed(*args, unknown_mids="skip")
    # x3.jpg's only label is the skipped /m/0b: dropped, as the official format drops such images
    np.testing.assert_array_equal(skipped.labels.to_dense(), PROCESSED_TRAIN[:2, :2])
    assert [p.rsplit("/", 1)[-1] for p in skipped.image_paths] == ["x1.jpg", "x2.jpg"]
    assert skipped.load_stats["unknown_mid_labels"] == 2
    assert skipped.load_stats["images_without_labels"] == 1
    with pytest.raises(DatasetError, match="split_name in \\['test'\\]; the file has \\['train', 'val'\\]"):
        OpenImagesDataset.from_processed(*args, split="test")
    (processed / "data.csv").write_text(PROCESSED_CSV + "train/x4.jpg,/m/0a,[],train\n")
    with pytest.raises(DatasetError, match="line 6, column label: '/m/0a' is not a list of quoted MIDs"):
        OpenImagesDataset.from_processed(*args, unknown_mids="skip")
    (processed / "data.csv").write_text(PROCESSED_CSV + "train/x4.jpg,[/m/0a],[],train\n")
    with pytest.raises(DatasetError, match="line 6, column label: '\\[/m/0a\\]' is not a list of quoted"):
        OpenImagesDataset.from_processed(*args, unknown_mids="skip")
    (processed / "data.csv").write_text("path,labels\nx,[]\n")
    with pytest.raises(DatasetError, match="filepath,label,label_neg,split_name"):
        OpenImagesDataset.from_processed(*args)


def test_mid_to_classes_that_is_not_a_dict_is_rejected(processed):
    torch.save(["/m/0a"], processed / "mid_to_classes.pth")
    with pytest.raises(DatasetError, match="expected a non-empty dict"):
        OpenImagesDataset.from_processed(str(processed / "images"), str(processed / "data.csv"),
                                         str(processed / "mid_to_classes.pth"))


def test_class_list_formats(tmp_path):
    (tmp_path / "boxable.csv").write_text("/m/0a,Apple\n/m/0b,Bus\n")  # no header
    assert read_class_list(str(tmp_path / "boxable.csv")) == (["/m/0a", "/m/0b"], ["Apple", "Bus"])
    (tmp_path / "dup.txt").write_text("/m/0a\n/m/0a\n")
    with pytest.raises(DatasetError, match="repeats some MIDs"):
        read_class_list(str(tmp_path / "dup.txt"))


def test_build_label_csr_matches_dense_reference():
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, 30, 400), rng.integers(0, 7, 400)
    positive = rng.random(400) < 0.4
    labels, stats = build_label_csr(rows, cols, positive, 30, 7)
    reference = np.full((30, 7), -1, dtype=np.int8)
    for r, c, p in zip(rows, cols, positive):  # independent loop: positive wins
        reference[r, c] = 1 if p or reference[r, c] == 1 else 0
    np.testing.assert_array_equal(labels.to_dense(), reference)
    assert stats["duplicate_labels"] + stats["conflicting_labels"] == 400 - (reference != -1).sum()
