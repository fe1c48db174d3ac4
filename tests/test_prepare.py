"""python -m src.data.prepare, offline: tiny archives with each dataset's published layout are served from
``file://`` folders (and a localhost HTTP server with Range support for resuming), prepared through
``main(argv)``, and read back with the project's own readers (``src.data.build_split``)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import re
import tarfile
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import train
from src.data import build_split
from src.data import prepare as prepare_module
from src.data.labels import DatasetError
from src.data.prepare import BASE_URL_ENV, DATASETS, main
from src.utils.download import OVERLAP_BYTES, DownloadError, download


# --------------------------------------------------------------------------- fixtures: tiny archives
def jpeg_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 8), (value, 255 - value, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def write_tar_gz(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def use_fixture_table(monkeypatch, dataset: str, mirror, checksums: bool = True):
    """The dataset's table with the fixture files' own sizes and md5 (computed here, independently)."""
    spec = DATASETS[dataset]
    files = tuple(dataclasses.replace(f, size=os.path.getsize(mirror / f.name), exact=True,
                                      unpacked=10 * os.path.getsize(mirror / f.name),
                                      checksum=f"md5:{md5(mirror / f.name)}" if checksums else None)
                  for f in spec.files)
    monkeypatch.setitem(DATASETS, dataset, dataclasses.replace(spec, files=files))


# image id -> category ids; category 3 'cat', 5 'dog' (columns in ascending id order: cat, dog)
COCO_TRAIN = {1: [5], 2: [3, 5], 3: [3]}
COCO_VAL = {7: [3], 8: [5]}


def coco_annotations(split: str, annotated: dict[int, list[int]]) -> bytes:
    images = [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg", "width": 10, "height": 8}
              for i in annotated]
    annotations = [{"id": 100 * i + k, "image_id": i, "category_id": c, "area": 4.0, "bbox": [0, 0, 2, 2],
                    "iscrowd": 0} for i, cats in annotated.items() for k, c in enumerate(cats)]
    categories = [{"id": 5, "name": "dog", "supercategory": "animal"},
                  {"id": 3, "name": "cat", "supercategory": "animal"}]
    return json.dumps({"images": images, "annotations": annotations, "categories": categories}).encode()


@pytest.fixture
def coco_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for split, annotated in (("train", COCO_TRAIN), ("val", COCO_VAL)):
        write_zip(mirror / f"{split}2014.zip", {f"{split}2014/COCO_{split}2014_{i:012d}.jpg": jpeg_bytes(i)
                                                for i in annotated})
    write_zip(mirror / "annotations_trainval2014.zip", {
        "annotations/instances_train2014.json": coco_annotations("train", COCO_TRAIN),
        "annotations/instances_val2014.json": coco_annotations("val", COCO_VAL),
        "annotations/captions_train2014.json": b"{}",  # in the real zip too; not needed, not unpacked
    })
    return mirror


def tree(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


# --------------------------------------------------------------------------- COCO 2014
def test_coco2014_from_file_urls_loads_with_build_split(coco_mirror, tmp_path, monkeypatch, capsys):
    use_fixture_table(monkeypatch, "coco2014", coco_mirror)
    root = tmp_path / "coco"
    result = main(["coco2014", "--root", str(root), "--base_url", coco_mirror.as_uri(), "--no_progress"])
    out = capsys.readouterr().out

    assert tree(root) == sorted([*(f"train2014/COCO_train2014_{i:012d}.jpg" for i in COCO_TRAIN),
                                 *(f"val2014/COCO_val2014_{i:012d}.jpg" for i in COCO_VAL),
                                 "annotations/instances_train2014.json", "annotations/instances_val2014.json",
                                 *(f".prepare/{f.name}.json" for f in DATASETS["coco2014"].files)])
    assert (result["data"], result["metadata"]) == (str(root), None)
    train_set = build_split("coco", "train", data=result["data"], metadata=result["metadata"])
    val_set = build_split("coco", "val", data=result["data"], metadata=result["metadata"])
    assert train_set.class_names == ["cat", "dog"] and list(train_set.image_ids) == [1, 2, 3]
    np.testing.assert_array_equal(train_set.labels.to_dense(), [[0, 1], [1, 1], [1, 0]])
    np.testing.assert_array_equal(val_set.labels.to_dense(), [[1, 0], [0, 1]])
    assert train_set[1][0].size == (10, 8)  # the image decodes

    # The printed command is the one returned, and train.py's own parser accepts it.
    command = "python train.py " + " ".join(result["train_argv"])
    assert command in out
    parsed = train.parse_args(result["train_argv"])
    assert (parsed.data, parsed.dataset_type, parsed.num_classes) == (str(root), "coco", 80)
    assert parsed.simulate_partial_type == "fpc" and parsed.partial_loss_mode == "ignore"
    assert train.parse_args(result["stage2_argv"]).partial_loss_mode == "selective"

    # A second run finds everything done: nothing is fetched (the mirror may even be gone).
    for path in coco_mirror.iterdir():
        path.unlink()
    again = main(["coco2014", "--root", str(root), "--base_url", coco_mirror.as_uri(), "--no_progress"])
    assert again["train_argv"] == result["train_argv"]
    assert capsys.readouterr().out.count("already done") == 3


def test_dry_run_changes_nothing_and_lists_urls_and_disk(coco_mirror, tmp_path, monkeypatch, capsys):
    before = tree(tmp_path)
    root = tmp_path / "not_yet"
    monkeypatch.setenv(BASE_URL_ENV, "https://mirror.example/coco/")
    result = main(["coco2014", "--root", str(root), "--dry-run"])
    out = capsys.readouterr().out
    assert tree(tmp_path) == before and not root.exists()
    assert [s.url for s in result["steps"]] == [f"https://mirror.example/coco/{f.name}"
                                                for f in DATASETS["coco2014"].files]
    sizes = {f.name: f.size for f in DATASETS["coco2014"].files}
    assert result["needs"]["download"] == sum(sizes.values())
    # each zip is unpacked next to itself, then deleted: the peak is while train2014.zip is unpacked
    assert result["needs"]["peak"] == sizes["train2014.zip"] + DATASETS["coco2014"].files[0].unpacked
    assert "dry run: nothing was downloaded or written" in out and "27.0 GB at the peak" in out
    # --base_url wins over the environment; --url over both, for its file only.
    result = main(["coco2014", "--root", str(root), "--dry-run", "--base_url", "file:///m",
                   "--url", "val2014.zip=http://other/v.zip"])
    assert [s.url for s in result["steps"]] == ["file:///m/train2014.zip", "http://other/v.zip",
                                                "file:///m/annotations_trainval2014.zip"]
    # A plain folder path is a file:// mirror.
    result = main(["coco2014", "--root", str(root), "--dry-run", "--base_url", str(tmp_path / "m")])
    assert result["steps"][0].url == (tmp_path / "m" / "train2014.zip").as_uri()
    with pytest.raises(ValueError, match="--url 'nope.zip=x': 'nope.zip' is not a file of this dataset"):
        main(["coco2014", "--root", str(root), "--dry-run", "--url", "nope.zip=x"])
    assert not root.exists()


def test_checksum_mismatch_names_the_file_and_the_next_run_starts_afresh(coco_mirror, tmp_path, monkeypatch):
    use_fixture_table(monkeypatch, "coco2014", coco_mirror)
    spec = DATASETS["coco2014"]
    wrong = tuple(dataclasses.replace(f, checksum="md5:" + "0" * 32) if f.name == "val2014.zip" else f
                  for f in spec.files)
    monkeypatch.setitem(DATASETS, "coco2014", dataclasses.replace(spec, files=wrong))
    root = tmp_path / "coco"
    argv = ["coco2014", "--root", str(root), "--base_url", coco_mirror.as_uri(), "--no_progress"]
    with pytest.raises(DownloadError, match=r"val2014.zip: checksum mismatch: md5 [0-9a-f]{32}, expected "
                                            r"0{32}.*moved to .*val2014.zip.bad; delete it and run the same"):
        main(argv)
    assert (root / "downloads" / "val2014.zip.bad").read_bytes() == (coco_mirror / "val2014.zip").read_bytes()
    assert not (root / ".prepare" / "val2014.zip.json").exists() and (root / "train2014").is_dir()
    # The clean exit of the command line: one line naming the file.
    assert prepare_module.cli(argv) == 2
    # With the right checksum the next run downloads it afresh and finishes.
    monkeypatch.setitem(DATASETS, "coco2014", spec)
    assert main(argv)["data"] == str(root)
    assert (root / "val2014").is_dir()


def test_size_mismatch_and_bad_inputs(coco_mirror, tmp_path, monkeypatch, capsys):
    use_fixture_table(monkeypatch, "coco2014", coco_mirror)
    spec = DATASETS["coco2014"]
    bigger = tuple(dataclasses.replace(f, size=f.size + 1) if f.name == "train2014.zip" else f
                   for f in spec.files)
    monkeypatch.setitem(DATASETS, "coco2014", dataclasses.replace(spec, files=bigger))
    root = tmp_path / "coco"
    with pytest.raises(DownloadError, match=r"train2014.zip: .* has \d+ bytes but the publisher lists \d+"):
        main(["coco2014", "--root", str(root), "--base_url", coco_mirror.as_uri(), "--no_progress"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="--root .*afile' is a file"):
        main(["coco2014", "--root", str(tmp_path / "afile"), "--dry-run"])
    with pytest.raises(DownloadError, match="no such file"):
        main(["coco2014", "--root", str(root), "--base_url", (tmp_path / "empty").as_uri(), "--no_progress"])
    with pytest.raises(SystemExit):
        main(["imagenet", "--root", str(root)])
    capsys.readouterr()


def test_unsafe_archive_member_is_refused(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_zip(mirror / "train2014.zip", {"../escaped.txt": b"no"})
    write_zip(mirror / "val2014.zip", {"val2014/a.jpg": b"x"})
    write_zip(mirror / "annotations_trainval2014.zip", {"annotations/x.json": b"{}"})
    use_fixture_table(monkeypatch, "coco2014", mirror)
    with pytest.raises(DatasetError, match="'../escaped.txt' would be written outside"):
        main(["coco2014", "--root", str(tmp_path / "root"), "--base_url", mirror.as_uri(), "--no_progress"])
    assert not (tmp_path / "escaped.txt").exists()


# --------------------------------------------------------------------------- resume
class RangeServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (name -> bytes) with HTTP Range support; records (path, Range header, bytes sent).
    ``cut_first_after``: the first response stops after that many bytes (a dropped connection);
    ``honour_range`` False: Range is ignored (200 with the whole file)."""

    def __init__(self, files: dict[str, bytes], honour_range: bool = True,
                 cut_first_after: int | None = None, fail_first: tuple[int, ...] = ()):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files, self.honour_range, self.cut = files, honour_range, cut_first_after
        self.fail_first = list(fail_first)  # HTTP error codes answered to the first requests
        self.requests: list[tuple[str, str | None, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        data = self.server.files.get(self.path.lstrip("/"))
        if self.server.fail_first:
            code = self.server.fail_first.pop(0)
            self.server.requests.append((self.path, self.headers.get("Range"), code))
            self.send_error(code)
            return
        if data is None:
            self.server.requests.append((self.path, self.headers.get("Range"), 404))
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1)) if requested else 0
        if requested and self.server.honour_range:
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                self.server.requests.append((self.path, requested, 0))
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            start = 0
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut is not None:
            body, self.server.cut = body[:self.server.cut], None
        # Recorded before the body is sent: the client may finish reading (and the test look at the
        # requests) before this handler thread runs again after write().
        self.server.requests.append((self.path, requested, len(body)))
        self.wfile.write(body)


@pytest.fixture
def serve(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    servers = []

    def start(files, **kwargs) -> RangeServer:
        server = RangeServer(files, **kwargs)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_interrupted_download_is_continued_over_http(coco_mirror, tmp_path, monkeypatch, serve, capsys):
    use_fixture_table(monkeypatch, "coco2014", coco_mirror)
    files = {p.name: p.read_bytes() for p in coco_mirror.iterdir()}
    server = serve(files)
    root = tmp_path / "coco"
    whole = files["train2014.zip"]
    half = len(whole) // 2
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "train2014.zip.part").write_bytes(whole[:half])  # an interrupted first run

    result = main(["coco2014", "--root", str(root), "--base_url", server.url, "--no_progress"])
    out = capsys.readouterr().out
    # Only the second half was asked for and sent (from a little earlier: those bytes are compared with the
    # .part's end before it is continued); the md5 over both halves matched.
    (request,) = [r for r in server.requests if r[0] == "/train2014.zip"]
    start = int(request[1].removeprefix("bytes=").rstrip("-"))
    assert half // 2 <= start < half and request[2] == len(whole) - start
    assert "continuing the partial download" in out
    assert build_split("coco", "train", data=result["data"]).labels.to_dense().shape == (3, 2)


def test_dropped_connection_is_retried_from_where_it_stopped(tmp_path, serve):
    payload = bytes(range(256)) * 400
    server = serve({"blob.bin": payload}, cut_first_after=30_000)
    dest = tmp_path / "blob.bin"
    result = download(f"{server.url}/blob.bin", str(dest), size=len(payload),
                      checksum=f"md5:{hashlib.md5(payload).hexdigest()}", progress=False, retry_wait=0,
                      log=lambda text: None)
    assert dest.read_bytes() == payload and not (tmp_path / "blob.bin.part").exists()
    start = 30_000 - OVERLAP_BYTES  # the .part's last bytes are fetched again and compared
    assert [(r[1], r[2]) for r in server.requests] == [(None, 30_000),
                                                       (f"bytes={start}-", len(payload) - start)]
    assert (result.fetched_bytes, result.resumed_from) == (len(payload), 0)


def test_server_errors_are_retried_and_a_missing_file_is_not(tmp_path, serve):
    payload = os.urandom(5_000)
    server = serve({"blob.bin": payload}, fail_first=(503, 500))
    notes = []
    download(f"{server.url}/blob.bin", str(tmp_path / "blob.bin"), progress=False, retry_wait=0,
             log=notes.append)
    assert (tmp_path / "blob.bin").read_bytes() == payload
    assert [r[2] for r in server.requests] == [503, 500, len(payload)] and "HTTP 503" in notes[0]
    with pytest.raises(DownloadError, match=r"/nothing.bin: the server answered HTTP 404 .*check the URL"):
        download(f"{server.url}/nothing.bin", str(tmp_path / "nothing.bin"), progress=False, retry_wait=0)
    assert server.requests[-1][0] == "/nothing.bin" and len(server.requests) == 4  # not retried


def test_server_without_range_support_restarts_and_a_complete_part_is_kept(tmp_path, serve):
    payload = os.urandom(50_000)
    checksum = f"md5:{hashlib.md5(payload).hexdigest()}"
    server = serve({"blob.bin": payload}, honour_range=False)
    (tmp_path / "blob.bin.part").write_bytes(payload[:20_000])
    notes = []
    result = download(f"{server.url}/blob.bin", str(tmp_path / "blob.bin"), checksum=checksum, progress=False,
                      log=notes.append)
    assert (tmp_path / "blob.bin").read_bytes() == payload and result.fetched_bytes == len(payload)
    assert any("starting from the beginning" in note for note in notes)
    # A .part that already holds every byte (killed before the rename): the server answers 416, no bytes move.
    server = serve({"blob.bin": payload})
    (tmp_path / "again.bin.part").write_bytes(payload)
    result = download(f"{server.url}/blob.bin", str(tmp_path / "again.bin"), checksum=checksum,
                      progress=False, log=lambda text: None)
    assert result.fetched_bytes == 0 and (tmp_path / "again.bin").read_bytes() == payload


def test_file_url_resume_seeks_and_retries_give_up_with_the_part_kept(tmp_path, monkeypatch):
    payload = os.urandom(100_000)
    (tmp_path / "src.bin").write_bytes(payload)
    (tmp_path / "dst.bin.part").write_bytes(payload[:40_000])
    result = download((tmp_path / "src.bin").as_uri(), str(tmp_path / "dst.bin"), size=len(payload),
                      checksum=f"sha256:{hashlib.sha256(payload).hexdigest()}", progress=False,
                      log=lambda text: None)
    assert (result.resumed_from, result.fetched_bytes) == (40_000, 60_000)
    assert (tmp_path / "dst.bin").read_bytes() == payload
    # A network that keeps failing: the error says the partial file is kept and how to continue.
    (tmp_path / "dst2.bin.part").write_bytes(payload[:10])

    def refuse(url, offset, timeout):
        raise ConnectionResetError("reset by peer")

    monkeypatch.setattr("src.utils.download._open", refuse)
    with pytest.raises(DownloadError, match=r"dst2.bin: downloading .* failed after 3 attempt\(s\) "
                                            r"\(reset by peer\)\. The partial file .*dst2.bin.part \(10 B\) "
                                            r"is kept: run the same command again to continue it"):
        download("http://unreachable.invalid/x", str(tmp_path / "dst2.bin"), retries=2, retry_wait=0,
                 progress=False, log=lambda text: None)
    assert (tmp_path / "dst2.bin.part").read_bytes() == payload[:10]


# --------------------------------------------------------------------------- LVIS v1
LVIS_CATEGORIES = [{"id": 4, "name": "kite", "frequency": "c"}, {"id": 2, "name": "abacus", "frequency": "r"}]


def lvis_json(images: list[tuple[int, str, list[int], list[int]]], annotated: dict[int, list[int]]) -> bytes:
    """images: (id, coco folder, negative ids, not-exhaustive ids)."""
    return json.dumps({
        "images": [{"id": i, "coco_url": f"http://images.cocodataset.org/{folder}/{i:012d}.jpg",
                    "neg_category_ids": neg, "not_exhaustive_category_ids": nex}
                   for i, folder, neg, nex in images],
        "annotations": [{"id": 10 * i + k, "image_id": i, "category_id": c} for i, cats in annotated.items()
                        for k, c in enumerate(cats)],
        "categories": LVIS_CATEGORIES}).encode()


def test_lvis_v1_layout_loads_with_build_split(tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_zip(mirror / "lvis_v1_train.json.zip", {"lvis_v1_train.json": lvis_json(
        [(1, "train2017", [4], []), (2, "train2017", [], [2])], {1: [2]})})
    write_zip(mirror / "lvis_v1_val.json.zip", {"lvis_v1_val.json": lvis_json(
        [(3, "val2017", [], []), (4, "train2017", [2], [])], {3: [4, 4]})})  # LVIS val uses train2017 too
    write_zip(mirror / "train2017.zip", {f"train2017/{i:012d}.jpg": jpeg_bytes(i) for i in (1, 2, 4)})
    write_zip(mirror / "val2017.zip", {"val2017/000000000003.jpg": jpeg_bytes(3)})
    use_fixture_table(monkeypatch, "lvis_v1", mirror)
    root = tmp_path / "lvis"
    result = main(["lvis_v1", "--root", str(root), "--base_url", mirror.as_uri(), "--no_progress",
                   "--keep_archives"])
    capsys.readouterr()
    assert (result["data"], result["metadata"]) == (str(root), str(root / "annotations"))
    assert sorted(os.listdir(root / "downloads")) == sorted(p.name for p in mirror.iterdir())  # kept
    train_set = build_split("lvis", "train", data=result["data"], metadata=result["metadata"])
    val_set = build_split("lvis", "val", data=result["data"], metadata=result["metadata"])
    assert train_set.class_names == ["abacus", "kite"]  # ascending category id
    np.testing.assert_array_equal(train_set.labels.to_dense(), [[1, 0], [1, -1]])
    np.testing.assert_array_equal(val_set.labels.to_dense(), [[-1, 1], [0, -1]])
    assert val_set[1][0].size == (10, 8)  # an LVIS val image read from train2017/
    parsed = train.parse_args(result["train_argv"])
    assert (parsed.dataset_type, parsed.num_classes) == ("lvis", 1203)
    assert parsed.metadata == str(root / "annotations")


# --------------------------------------------------------------------------- OpenImages (authors' release)
MIDS = {"/m/0a": "Cat", "/m/0b": "Dog", "/m/0c": "Car"}
DATA_CSV = """filepath,label,label_neg,split_name
train/x1.jpg,"['/m/0a', '/m/0c']",[],train
test/y1.jpg,['/m/0b'],"['/m/0a']",test
train/x2.jpg,[],"['/m/0b']",train
"""


def openimages_mirror(tmp_path, top: str = ""):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "data.csv").write_text(DATA_CSV)
    torch.save(MIDS, mirror / "mid_to_classes.pth")
    write_tar_gz(mirror / "train.tar.gz", {f"{top}train/x{i}.jpg": jpeg_bytes(i) for i in (1, 2)})
    write_tar_gz(mirror / "test.tar.gz", {f"{top}test/y1.jpg": jpeg_bytes(9)})
    return mirror


@pytest.mark.parametrize("top", ["", "Open_Images_V6/"])
def test_openimages_csl_finds_the_image_root_and_loads(tmp_path, monkeypatch, capsys, top):
    mirror = openimages_mirror(tmp_path, top)
    use_fixture_table(monkeypatch, "openimages_csl", mirror)
    root = tmp_path / "oi"
    result = main(["openimages_csl", "--root", str(root), "--base_url", mirror.as_uri(), "--no_progress"])
    capsys.readouterr()
    image_root = root / top.rstrip("/") if top else root
    assert (result["data"], result["metadata"]) == (str(image_root), str(root))
    assert not (root / "downloads").exists()  # archives deleted once unpacked; the folder too
    assert (root / "data.csv").read_text() == DATA_CSV
    train_set = build_split("openimages", "train", data=result["data"], metadata=result["metadata"])
    val_set = build_split("openimages", "val", data=result["data"], metadata=result["metadata"])
    assert train_set.class_names == ["Cat", "Dog", "Car"]
    np.testing.assert_array_equal(train_set.labels.to_dense(), [[1, -1, 1], [-1, 0, -1]])
    np.testing.assert_array_equal(val_set.labels.to_dense(), [[0, 1, -1]])
    assert val_set[0][0].size == (10, 8)
    parsed = train.parse_args(result["train_argv"])
    assert (parsed.dataset_type, parsed.image_size, parsed.num_classes) == ("openimages", 224, 9605)


def test_openimages_images_that_match_no_filepath_are_a_clear_error(tmp_path, monkeypatch):
    mirror = openimages_mirror(tmp_path)
    write_tar_gz(mirror / "train.tar.gz", {"elsewhere/x1.jpg": jpeg_bytes(1)})
    write_tar_gz(mirror / "test.tar.gz", {"elsewhere/y1.jpg": jpeg_bytes(9)})
    use_fixture_table(monkeypatch, "openimages_csl", mirror, checksums=False)
    with pytest.raises(DatasetError, match=r"none of the sampled images of data.csv \(e.g. 'train/x1.jpg'\) "
                                           r"exists under .*move the images so that <folder>/<filepath>"):
        main(["openimages_csl", "--root", str(tmp_path / "oi"), "--base_url", mirror.as_uri(),
              "--no_progress"])


def test_the_table_matches_the_published_sources():
    """The URLs are the publishers' (OpenImages.md of the paper repository, cocodataset.org, LVIS)."""
    urls = {name: [prepare_module.resolve_url(f, None, {}) for f in spec.files]
            for name, spec in DATASETS.items()}
    oi = "https://miil-public-eu.oss-eu-central-1.aliyuncs.com/public/Open_Images_V6/"
    assert urls["openimages_csl"] == [oi + n for n in ("data.csv", "mid_to_classes.pth", "test.tar.gz",
                                                       "train.tar.gz")]
    assert urls["coco2014"] == ["http://images.cocodataset.org/zips/train2014.zip",
                                "http://images.cocodataset.org/zips/val2014.zip",
                                "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"]
    assert urls["lvis_v1"][:2] == ["https://dl.fbaipublicfiles.com/LVIS/lvis_v1_train.json.zip",
                                   "https://dl.fbaipublicfiles.com/LVIS/lvis_v1_val.json.zip"]
    # Exact sizes go with a checksum; estimates never pretend to be exact.
    for spec in DATASETS.values():
        for remote in spec.files:
            assert (remote.checksum is not None) == remote.exact, remote.name
