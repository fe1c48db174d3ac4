"""Issue 18, inputs checked for what they are: byte-order marks, repeated or malformed COCO ids and names,
simulations that leave nothing to train on, truncated downloads and junk ``.part`` files, unwritable
``prepare --root`` in the dry run, and a text file given as ``--partial_labels``."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
import torch

import coco_simulation.__main__ as coco_simulation
from src.data import apply_partial_labels
from src.data import prepare as prepare_module
from src.data.coco import CocoDetection
from src.data.labels import DatasetError
from src.data.lvis import lvis_dataset
from src.data.openimages import OpenImagesDataset
from src.data.prepare import DATASETS
from src.models import hub
from src.utils.cli import ConfigError, run_cli
from src.utils.download import download
from tests.test_data_coco import EXPECTED, coco_json, write_images
from tests.test_data_lvis import ANNOTATIONS as LVIS_ANNOTATIONS
from tests.test_data_lvis import CATEGORIES as LVIS_CATEGORIES
from tests.test_data_lvis import EXPECTED as LVIS_EXPECTED
from tests.test_data_lvis import IMAGES as LVIS_IMAGES
from tests.test_data_openimages import write_jpeg
from tests.test_prepare import DATA_CSV, openimages_mirror, serve  # noqa: F401 (serve: a fixture)

BOM = b"\xef\xbb\xbf"


def fresh_coco() -> dict:
    """tests/test_data_coco.py's COCO content, deep-copied (its category dicts are module constants)."""
    return json.loads(json.dumps(coco_json("train")))


@pytest.fixture
def coco_files(tmp_path):
    """(image folder, annotation file writer): ``write(content, prefix=b"")`` writes the JSON, returns it."""
    write_images(tmp_path / "train2014", "train")

    def write(content: dict, prefix: bytes = b"") -> str:
        path = tmp_path / "instances_train2014.json"
        path.write_bytes(prefix + json.dumps(content).encode())
        return str(path)

    return str(tmp_path / "train2014"), write




# ------------------------------------------------------------------------- 1. byte-order marks
def test_a_utf8_bom_keeps_the_first_class_of_every_text_input(tmp_path, coco_files):
    # OpenImages: the trainable-class list and the descriptions CSV, both with a BOM; the first class
    # (/m/0c) keeps its labels and its name, and no label is skipped as an unknown MID.
    (tmp_path / "classes.txt").write_bytes(BOM + b"/m/0c\n/m/0a\n")
    (tmp_path / "descriptions.csv").write_bytes(BOM + b"/m/0c,Cat\n/m/0a,Apple\n")
    (tmp_path / "labels.csv").write_bytes(BOM + b"ImageID,Source,LabelName,Confidence\n"
                                                b"aaa,verification,/m/0c,1\nbbb,verification,/m/0a,0\n")
    for image_id in ("aaa", "bbb"):
        write_jpeg(tmp_path / "images" / "train" / f"{image_id}.jpg")
    ds = OpenImagesDataset.from_official(str(tmp_path / "images"), str(tmp_path / "labels.csv"),
                                         str(tmp_path / "classes.txt"), "train",
                                         descriptions_csv=str(tmp_path / "descriptions.csv"))
    assert ds.class_mids == ["/m/0c", "/m/0a"] and ds.class_names == ["Cat", "Apple"]
    np.testing.assert_array_equal(ds.labels.to_dense(), [[1, -1], [-1, 0]])
    assert ds.load_stats["unknown_mid_labels"] == 0
    # COCO JSON with a BOM: the same labels as without one.
    root, write = coco_files
    ds = CocoDetection(root, write(fresh_coco(), BOM))
    np.testing.assert_array_equal(ds.labels.to_dense(), EXPECTED)
    # LVIS JSON with a BOM.
    lvis = tmp_path / "lvis"
    (lvis / "annotations").mkdir(parents=True)
    (lvis / "annotations" / "lvis_v1_train.json").write_bytes(BOM + json.dumps(
        {"images": LVIS_IMAGES, "annotations": LVIS_ANNOTATIONS, "categories": LVIS_CATEGORIES}).encode())
    for folder, image_id in (("train2017", 101), ("val2017", 103)):
        write_jpeg(lvis / folder / f"{image_id:012d}.jpg")
    np.testing.assert_array_equal(lvis_dataset("train", data=str(lvis)).labels.to_dense(), LVIS_EXPECTED)


# ------------------------------------------------------------------------- 2. COCO ids and names
@pytest.mark.parametrize("change, message", [
    (lambda c: c["images"].append(dict(c["images"][0], file_name="other.jpg")),
     r"image ids \[10\] are listed more than once in 'images'"),
    (lambda c: c["categories"].append({"id": 5, "name": "wolf"}),
     r"category ids \[5\] are listed more than once in 'categories'"),
    (lambda c: c["categories"].append({"id": 11, "name": "dog"}),
     r"category names \['dog'\] are listed more than once in 'categories'"),
    (lambda c: c["categories"][1].pop("name"), r"categories\[1\] \(id 9\) has 'name' None; every category"),
    (lambda c: c["categories"][0].update(id="5"), r"categories\[0\] \(name 'dog'\) has 'id' '5'; category "
                                                 r"ids must be JSON integers"),
])
def test_repeated_or_malformed_coco_ids_and_names_are_refused_naming_them(coco_files, tmp_path, capsys,
                                                                          change, message):
    root, write = coco_files
    content = fresh_coco()
    change(content)
    ann_file = write(content)
    with pytest.raises(DatasetError, match=rf"instances_train2014.json: {message}"):
        CocoDetection(root, ann_file)
    # From a command: one line naming the file, exit 2, no traceback.
    (tmp_path / "annotations").mkdir()
    os.replace(ann_file, tmp_path / "annotations" / "instances_train2014.json")
    code = run_cli(coco_simulation.main, ["--data", str(tmp_path), "--out", str(tmp_path / "p.npz"),
                                          "--plot", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "instances_train2014.json: " in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------- 3. empty simulations
@pytest.mark.parametrize("mode, param, left, fix", [
    ("rps", 1.0, "no annotated label", "probability of removing each label: use a value below 1"),
    ("fpc", 0, "no annotated label", "use 1 or more"),
    ("known_ratio", 0.0, "no annotated label", "use a value above 0"),
])
def test_a_simulation_that_leaves_nothing_to_train_on_is_refused(coco_files, tmp_path, capsys, mode, param,
                                                                   left, fix):
    root, write = coco_files
    ds = CocoDetection(root, write(fresh_coco()))
    expected = rf"--simulate_partial_type {mode} --simulate_partial_param {param} leaves {left} .*{fix}"
    with pytest.raises(ConfigError, match=expected):
        apply_partial_labels(ds, simulate_type=mode, simulate_param=param)
    np.testing.assert_array_equal(ds.labels.to_dense(), EXPECTED)  # labels untouched
    # coco_simulation refuses too, and writes no file.
    (tmp_path / "annotations").mkdir()
    write(fresh_coco())
    os.replace(tmp_path / "instances_train2014.json", tmp_path / "annotations" / "instances_train2014.json")
    out = tmp_path / "p.npz"
    code = run_cli(coco_simulation.main, ["--data", str(tmp_path), "--out", str(out), "--plot", "none",
                                          "--simulate_partial_type", mode, "--simulate_partial_param",
                                          str(param)])
    assert code == 2 and "--simulate_partial_param" in capsys.readouterr().err and not out.exists()


def test_a_draw_that_keeps_negatives_but_no_positive_is_refused(coco_files):
    root, write = coco_files
    content = fresh_coco()
    ds = CocoDetection(root, write(content))
    ds.set_labels(np.zeros((3, 3), dtype=np.int8))  # a dataset without any positive
    with pytest.raises(ConfigError, match="leaves no positive label on 3 images"):
        apply_partial_labels(ds, simulate_type="known_ratio", simulate_param=1.0)


# ------------------------------------------------------------------------- 4. downloads
def openimages_table(monkeypatch):
    """The real openimages_csl table (no sizes or checksums from the publisher), unpacking estimates small."""
    spec = DATASETS["openimages_csl"]
    files = tuple(dataclasses.replace(f, size=1, unpacked=1) for f in spec.files)
    monkeypatch.setitem(DATASETS, "openimages_csl", dataclasses.replace(spec, files=files))
    assert all(f.checksum is None and not f.exact for f in files)


def test_a_truncated_data_csv_is_continued_from_a_source_that_gives_its_size(tmp_path, monkeypatch, capsys):
    mirror = openimages_mirror(tmp_path)
    openimages_table(monkeypatch)
    root = tmp_path / "oi"
    root.mkdir()
    cut = DATA_CSV.index("test/y1.jpg") + 5
    (root / "data.csv").write_text(DATA_CSV[:cut])  # left by an interrupted download
    main_argv = ["openimages_csl", "--root", str(root), "--base_url", mirror.as_uri(), "--no_progress"]
    prepare_module.main(main_argv)
    out = capsys.readouterr().out
    assert f"data.csv has {cut} bytes but the source {len(DATA_CSV)}" in out
    assert "already there" not in out.split("data.csv: downloaded")[1].splitlines()[0]
    assert (root / "data.csv").read_text() == DATA_CSV


def test_a_truncated_data_csv_from_a_source_without_size_is_refused(tmp_path, monkeypatch, serve, capsys):  # noqa: F811 (serve: the fixture)
    mirror = openimages_mirror(tmp_path)
    openimages_table(monkeypatch)
    server = serve({p.name: p.read_bytes() for p in mirror.iterdir()})  # answers no HEAD request
    root = tmp_path / "oi"
    root.mkdir()
    (root / "data.csv").write_text(DATA_CSV[:DATA_CSV.index("test/y1.jpg") + 5])
    argv = ["openimages_csl", "--root", str(root), "--base_url", server.url, "--no_progress"]
    with pytest.raises(DatasetError, match=r"oi/data.csv is incomplete: it does not end in a complete row "
                                           r"\(1 of 4 fields, no final newline\).*delete it and run"):
        prepare_module.main(argv)
    assert not (root / ".prepare" / "data.csv.json").exists()  # not stamped as done
    # A last row that ends in a newline but has too few fields is refused as well.
    (root / "data.csv").write_text(DATA_CSV.splitlines(keepends=True)[0] + "train/x1.jpg,[],[]\n")
    assert prepare_module.cli(argv) == 2
    assert "(3 of 4 fields)" in capsys.readouterr().err
    # Deleted, it is downloaded whole (the size of a fresh download is the server's Content-Length).
    (root / "data.csv").unlink()
    prepare_module.main(argv)
    assert (root / "data.csv").read_text() == DATA_CSV


def test_a_junk_part_is_discarded_not_continued(tmp_path, serve, monkeypatch):  # noqa: F811 (serve: the fixture)
    payload = os.urandom(50_000)
    server = serve({"w.pth": payload})
    (tmp_path / "w.pth.part").write_bytes(os.urandom(20_000))  # not a prefix of the file
    notes = []
    result = download(f"{server.url}/w.pth", str(tmp_path / "w.pth"), progress=False, log=notes.append)
    assert (tmp_path / "w.pth").read_bytes() == payload and result.fetched_bytes == len(payload)
    assert any("cannot be continued (its last bytes differ from the source's)" in n for n in notes)
    assert [r[1] is None for r in server.requests] == [False, True]  # the overlap, then the whole file
    # The torch hub cache uses the same routine: its junk .part never becomes the cached file.
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = f"{server.url}/w.pth"
    os.makedirs(os.path.dirname(hub.cache_path(url)))
    with open(hub.cache_path(url) + ".part", "wb") as handle:
        handle.write(b"<html>proxy error</html>" * 900)
    cached = hub.cached_download(url, progress=False)
    with open(cached.path, "rb") as handle:
        assert handle.read() == payload
    assert not os.path.exists(hub.cache_path(url) + ".part")


def test_a_continued_part_that_fails_its_check_is_downloaded_anew(tmp_path):
    payload = os.urandom(60_000)
    (tmp_path / "src.bin").write_bytes(payload)
    # Its end matches the source (so it is continued) but its start does not: the checksum fails.
    (tmp_path / "dst.bin.part").write_bytes(bytes(10_000) + payload[10_000:30_000])
    notes = []
    checksum = f"sha256:{hashlib.sha256(payload).hexdigest()}"
    result = download((tmp_path / "src.bin").as_uri(), str(tmp_path / "dst.bin"), size=len(payload),
                      checksum=checksum, progress=False, log=notes.append)
    assert (tmp_path / "dst.bin").read_bytes() == payload and result.resumed_from == 0
    assert any("did not verify" in n and "downloading it anew" in n for n in notes)
    assert sorted(os.listdir(tmp_path)) == ["dst.bin", "src.bin"]  # no .part, no .bad left


# ------------------------------------------------------------------------- 5. prepare --dry-run
def test_dry_run_refuses_a_root_that_cannot_be_a_writable_folder(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    under_file = tmp_path / "afile" / "data"
    with pytest.raises(ConfigError, match=rf"--root '{under_file}': '{tmp_path / 'afile'}' is a file, not a "
                                          r"folder; pass a folder"):
        prepare_module.main(["coco2014", "--root", str(under_file), "--dry-run"])
    with pytest.raises(ConfigError, match=r"--downloads '.*afile/dl': '.*afile' is a file"):
        prepare_module.main(["coco2014", "--root", str(tmp_path / "r"), "--downloads",
                             str(tmp_path / "afile" / "dl"), "--dry-run"])
    if os.geteuid() == 0:  # root writes into any mode-0555 folder; sysfs takes no new file even from root
        read_only = "/sys"
    else:
        read_only = str(tmp_path / "ro")
        os.mkdir(read_only, 0o555)
    assert prepare_module.cli(["coco2014", "--root", os.path.join(read_only, "coco"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"--root '{read_only}/coco': cannot write in '{read_only}'" in err
    assert "choose a writable folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------- 6. --partial_labels
def test_a_text_file_as_partial_labels_names_the_file_and_what_is_expected(coco_files, tmp_path):
    root, write = coco_files
    ds = CocoDetection(root, write(fresh_coco()))
    (tmp_path / "labels.txt").write_text("image,cat,dog,car\n20,1,1,0\n")
    with pytest.raises(ValueError) as error:
        apply_partial_labels(ds, partial_labels=str(tmp_path / "labels.txt"))
    message = str(error.value)
    assert f"{tmp_path / 'labels.txt'} (--partial_labels) is not a .npz archive (it starts with b'image" \
           in message and "python -m coco_simulation --out" in message
    assert "pickle" not in message
