"""--dataset_type csv: both layouts (files written by hand here, and by the embedded generator), the class
order, sparse storage at scale, every bad-input error (file, line, fix), the BOM, simulation on top, and
train.py -> src.prior -> validate.py -> infer.py on a hand-made CSV dataset with its own class names."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import numpy as np
import pytest
from PIL import Image

import infer
import reproduce
import train
import validate
from src.data import apply_partial_labels, build_split
from src.data.coco import CocoDetection
from src.data.csv_dataset import CsvDataset, read_csv_labels
from src.data.embedded import generate_embedded_dataset
from src.data.embedded import main as embedded_main
from src.data.labels import DatasetError
from src.prior_command import main as prior_main
from src.reproduce import runner
from tests.conftest import TINY_MODEL, run_in_this_process, single_thread

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write(path, text: str, encoding: str = "utf-8") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as handle:
        handle.write(text)
    return str(path)


def picture(path, present=()) -> None:
    """A 32 px grey picture with one coloured square per class in ``present``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.full((32, 32, 3), 128, np.uint8)
    for k, name in enumerate(COLOURS):
        if name in present:
            pixels[2 + 10 * k:10 + 10 * k, 4:28] = COLOURS[name]
    Image.fromarray(pixels).save(path)


def images(root, names) -> None:
    for name in names:
        picture(os.path.join(root, name))


def dense(dataset) -> list[list[int]]:
    return dataset.labels.to_dense().tolist()


# ------------------------------------------------------------------------------------------- layouts
def test_wide_layout_by_hand(tmp_path):
    images(tmp_path, ["img/a.png", "img/b.png", "img/c.png"])
    write(tmp_path / "train.csv", "image,dog,cat,bird\n"
                                  "img/a.png,1,0,\n"
                                  "img/b.png, -1 ,1,0\n"
                                  "\n"  # blank lines are skipped
                                  "img/c.png,,,1\n")
    dataset = build_split("csv", "train", data=str(tmp_path))
    assert dataset.class_names == ["bird", "cat", "dog"]  # no classes.txt: sorted
    assert dense(dataset) == [[-1, 0, 1], [0, 1, -1], [1, -1, -1]]
    assert dataset.labels.is_sparse and dataset.layout == "wide"
    assert dataset.image_paths[1] == os.path.join(str(tmp_path), "img/b.png")
    image, target = dataset[0]
    assert image.size == (32, 32) and target.tolist() == [-1.0, 0.0, 1.0]
    assert "3 images x 3 classes (wide layout): 3 positive, 2 negative labels, 44.4% not annotated" in \
        dataset.describe_load_stats()


def test_lists_layout_by_hand_with_classes_file(tmp_path):
    images(tmp_path, ["a.jpg", "sub dir/b.jpg"])
    write(tmp_path / "classes.txt", "zebra\n\nant\nmoth\n")
    write(tmp_path / "train.csv", 'image,positives,negatives\n'
                                  'a.jpg,zebra; ant,moth\n'
                                  '"sub dir/b.jpg",,ant;ant\n')
    write(tmp_path / "val.csv", "positives,image,negatives\nmoth,a.jpg,\n")  # any column order
    train_set = build_split("csv", "train", data=str(tmp_path))
    val_set = build_split("csv", "val", data=str(tmp_path))
    assert train_set.class_names == val_set.class_names == ["zebra", "ant", "moth"]  # classes.txt's order
    assert dense(train_set) == [[1, 1, 0], [-1, 0, -1]]  # a name repeated in one list counts once
    assert dense(val_set) == [[-1, -1, 1]]
    assert list(train_set.image_ids) == [b"a.jpg", b"sub dir/b.jpg"]


def test_val_takes_the_class_order_of_train_and_test_csv_stands_for_val(tmp_path):
    images(tmp_path / "pics", ["a.png", "b.png"])
    meta = tmp_path / "meta"
    write(meta / "train.csv", "image,positives,negatives\na.png,b_class;c_class,a_class\n")
    write(meta / "test.csv", "image,positives,negatives\nb.png,a_class,\n")
    val_set = build_split("csv", "val", data=str(tmp_path / "pics"), metadata=str(meta))
    assert val_set.class_names == ["a_class", "b_class", "c_class"] and dense(val_set) == [[1, -1, -1]]
    assert val_set.label_source == str(meta / "test.csv")


def test_bom_and_crlf_are_read(tmp_path):
    images(tmp_path, ["a.png"])
    write(tmp_path / "train.csv", "image,x,y\r\na.png,1,0\r\n", encoding="utf-8-sig")
    assert (tmp_path / "train.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    write(tmp_path / "classes.txt", "y\nx\n", encoding="utf-8-sig")
    dataset = build_split("csv", "train", data=str(tmp_path))
    assert dataset.class_names == ["y", "x"] and dense(dataset) == [[0, 1]]


def test_metadata_default_of_coco_falls_back_to_data(tmp_path):
    """train.py's --metadata default (./data/COCO_2014) holds no CSV: the files in --data are read."""
    images(tmp_path, ["a.png"])
    write(tmp_path / "train.csv", "image,x\na.png,1\n")
    dataset = build_split("csv", "train", data=str(tmp_path), metadata=str(tmp_path / "COCO_2014"))
    assert dataset.label_source == str(tmp_path / "train.csv")


@pytest.mark.parametrize("layout", ["lists", "wide"])
def test_embedded_as_csv_matches_the_coco_reader(tmp_path, layout, capsys):
    out = str(tmp_path / "emb")
    generate_embedded_dataset(out, n_train=30, n_test=12, image_size=32, seed=3)
    embedded_main(["--out", out, "--n_train", "30", "--n_test", "12", "--seed", "3", "--format", "csv",
                   "--layout", layout])
    assert "nothing to do" in capsys.readouterr().out  # the images exist: only the CSVs are written
    for split, folder in (("train", "train2014"), ("val", "val2014")):
        coco = CocoDetection(os.path.join(out, folder), os.path.join(out, "annotations",
                                                                     f"instances_{folder}.json"))
        from_csv = build_split("csv", split, data=out)
        assert from_csv.class_names == coco.class_names and from_csv.layout == layout
        assert list(from_csv.image_paths) == list(coco.image_paths)
        assert np.array_equal(from_csv.labels.to_dense(), coco.labels.to_dense())
    with open(os.path.join(out, "train.csv"), encoding="utf-8") as handle:
        header = handle.readline().strip()
    wide_header = "image," + ",".join(coco.class_names)
    assert header == ("image,positives,negatives" if layout == "lists" else wide_header)


def test_embedded_unannotated_hides_train_labels_only(tmp_path):
    out = str(tmp_path / "emb")
    embedded_main(["--out", out, "--n_train", "200", "--n_test", "10", "--format", "csv",
                   "--unannotated", "0.5"])
    train_set, val_set = build_split("csv", "train", data=out), build_split("csv", "val", data=out)
    unknown = (train_set.labels.to_dense() == -1).mean()
    assert 0.45 < unknown < 0.55 and (val_set.labels.to_dense() != -1).all()


def test_simulation_on_top_of_a_csv(tmp_path):
    """--simulate_partial_type works on CSV labels: fpc 1 keeps one positive and one negative per class."""
    names = [f"{i}.png" for i in range(6)]
    images(tmp_path, names)
    rows = "".join(f"{name},{i % 2},{1 - i % 2}\n" for i, name in enumerate(names))
    write(tmp_path / "train.csv", "image,p,q\n" + rows)
    dataset = build_split("csv", "train", data=str(tmp_path))
    as_read = dataset.describe_load_stats()
    summary = apply_partial_labels(dataset, simulate_type="fpc", simulate_param=1, seed=0)
    assert dataset.describe_load_stats() == as_read  # the line describes the file, not the draw
    labels = dataset.labels.to_dense()
    assert summary["positives_kept"] == 2
    assert ((labels == 1).sum(axis=0) == 1).all() and ((labels == 0).sum(axis=0) == 1).all()


# ----------------------------------------------------------------------------------------- at scale
def test_lists_layout_at_scale_is_fast_and_sparse(tmp_path):
    """50,000 images x 5,000 classes, 5 positives and 20 negatives each: stored in memory proportional to the
    1.25 M labels (a dense int8 matrix would take 250 MB). No time bound: timings belong in bench/."""
    n_images, n_classes = 50_000, 5_000
    rng = np.random.default_rng(0)
    # 25 distinct classes a row: start + step * k (mod 5,000) with step * 24 < 5,000
    start, step = rng.integers(0, n_classes, (n_images, 1)), rng.integers(1, 200, (n_images, 1))
    chosen = (start + step * np.arange(25)) % n_classes
    names = np.array([f"class_{c:04d}" for c in range(n_classes)])
    lines = ["image,positives,negatives"] + [
        f"{i}.jpg,{';'.join(names[row[:5]])},{';'.join(names[row[5:]])}" for i, row in enumerate(chosen)]
    path = write(tmp_path / "train.csv", "\n".join(lines) + "\n")
    images_read, line_numbers, labels, layout = read_csv_labels(path, list(names))
    assert layout == "lists" and labels.is_sparse and labels.shape == (n_images, n_classes)
    (pos_indptr, pos_indices), (neg_indptr, neg_indices) = labels.csr()
    stored = sum(a.nbytes for a in (pos_indptr, pos_indices, neg_indptr, neg_indices))
    assert stored < 7 * 2**20 < n_images * n_classes  # ~5.8 MB vs 250 MB dense
    assert images_read[123] == "123.jpg" and line_numbers[123] == 125
    for row in (0, 123, n_images - 1):
        expected = np.full(n_classes, -1)
        expected[chosen[row, :5]], expected[chosen[row, 5:]] = 1, 0
        assert np.array_equal(labels.row(row), expected)


# -------------------------------------------------------------------------------------------- errors
ERROR_CASES = {
    "unknown class": ("image,positives,negatives\na.png,x,\nb.png,x;cat,\n", "x\n",
                      r"train.csv: line 3: unknown class 'cat', not among the 1 classes .*add the class"),
    "unknown wide column": ("image,x,cat\na.png,1,0\n", "x\n",
                            r"train.csv: line 1: column\(s\) \['cat'\] are not among .*classes.txt"),
    "repeated image": ("image,x\na.png,1\nb.png,0\na.png,0\n", None,
                       r"train.csv: line 4: image 'a.png' is repeated \(first on line 2\); merge its labels"),
    "bad value": ("image,x,y\na.png,1,0\nb.png,yes,1\n", None,
                  r"train.csv: line 3, column 'x': value 'yes' is not 1 \(present\), 0 \(absent\), -1 or "
                  r"empty"),
    "missing image": ("image,x\na.png,1\nb.png,0\nnowhere/c.png,1\n", None,
                      r"train.csv: line 4: image 'nowhere/c.png' not found under --data .*1 of 3 images "
                      r"missing\).*--skip_bad_images"),
    "missing image column": ("file,x\na.png,1\n", None,
                             r"train.csv: line 1: missing column 'image' .*image,positives,negatives"),
    "missing lists column": ("image,positives\na.png,x\n", None,
                             r"train.csv: line 1: the lists layout .*missing \['negatives'\]. Fix the "
                             r"header"),
    "short row": ("image,x,y\na.png,1\n", None, r"train.csv: line 2: 2 cells for 3 columns"),
    "positive and negative": ("image,positives,negatives\na.png,x;y,y\n", None,
                              r"train.csv: line 2: class 'y' is listed as both positive and negative"),
    "empty image cell": ("image,x\n,1\n", None, r"train.csv: line 2: the image cell is empty"),
    "repeated class in classes.txt": ("image,x\na.png,1\n", "x\ny\nx\n",
                                      r"classes.txt: line 3: class 'x' is already listed on line 1"),
    "empty file": ("", None, r"train.csv: the file is empty"),
    "no class column": ("image\na.png\n", None, r"train.csv: line 1: no class column next to 'image'"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_names_file_line_and_fix(tmp_path, case):
    text, classes, message = ERROR_CASES[case]
    images(tmp_path, ["a.png", "b.png"])
    write(tmp_path / "train.csv", text)
    if classes is not None:
        write(tmp_path / "classes.txt", classes)
    with pytest.raises(DatasetError, match=message):
        build_split("csv", "train", data=str(tmp_path))


def test_val_with_a_class_train_does_not_have(tmp_path):
    images(tmp_path, ["a.png"])
    write(tmp_path / "train.csv", "image,positives,negatives\na.png,dog,cat\n")
    write(tmp_path / "val.csv", "image,positives,negatives\na.png,cow,\n")
    with pytest.raises(DatasetError, match=r"val.csv: line 2: unknown class 'cow', not among the 2 classes"):
        build_split("csv", "val", data=str(tmp_path))


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DatasetError, match=r"CSV val labels not found: looked for val.csv or test.csv in .*"
                                           r"Pass --metadata DIR"):
        build_split("csv", "val", data=str(tmp_path))
    write(tmp_path / "meta" / "train.csv", "image,x\na.png,1\n")
    with pytest.raises(DatasetError, match=r"CSV image root not found: .*nowhere"):
        CsvDataset(str(tmp_path / "nowhere"), str(tmp_path / "meta" / "train.csv"), ["x"])


def test_skip_bad_images_drops_the_missing_rows(tmp_path):
    images(tmp_path, ["a.png"])
    write(tmp_path / "train.csv", "image,x\na.png,1\ngone.png,0\n")
    with pytest.warns(UserWarning, match="skipped 1 of 2 images"):
        dataset = build_split("csv", "train", data=str(tmp_path), skip_bad_images=True)
    assert list(dataset.image_ids) == [b"a.png"] and dense(dataset) == [[1]]


# ------------------------------------------------------------------------------ the commands, end to end
def hand_made_dataset(root, layout: str) -> None:
    """24 train and 8 val pictures of coloured squares and their labels, written here (not by the project)."""
    rng = np.random.default_rng(1)
    for split, count in (("train", 24), ("val", 8)):
        rows = []
        for i in range(count):
            present = [name for name in COLOURS if rng.random() < 0.5] or ["red"]
            name = f"{split}/{i:02d}.png"
            picture(os.path.join(root, name), present)
            # train partial; val complete in the lists layout, partial in the wide one
            known = [c for c in COLOURS if (split == "val" and layout == "lists") or rng.random() < 0.7]
            if layout == "wide":
                cells = [("1" if c in present else "0") if c in known else "" for c in COLOURS]
                rows.append(",".join([name, *cells]))
            else:
                rows.append(f"{name},{';'.join(c for c in known if c in present)},"
                            f"{';'.join(c for c in known if c not in present)}")
        header = "image," + ",".join(COLOURS) if layout == "wide" else "image,positives,negatives"
        write(os.path.join(root, f"{split}.csv"), "\n".join([header, *rows]) + "\n")


@pytest.mark.parametrize("layout", ["lists", "wide"])
def test_train_prior_validate_infer_on_a_hand_made_csv(tmp_path, layout, capsys):
    data = str(tmp_path / "data")
    hand_made_dataset(data, layout)
    common = ["--data", data, "--dataset_type", "csv", "--image-size", "32", "-j", "0", "--device", "cpu"]
    with single_thread():
        train.main([*common, "--model-path", "none", "--model-name", TINY_MODEL, "--num-classes", "3",
                    "--epochs", "2", "-b", "8", "--partial_loss_mode", "ignore", "--path_dest",
                    str(tmp_path / "run"), "--print-freq", "100"])
        out = capsys.readouterr().out
        assert f"{layout} layout" in out and "not annotated" in out
        best = str(tmp_path / "run" / "best.pth")
        prior = prior_main(["--model_path", best, *common, "--out", str(tmp_path / "prior.csv")])
        result = validate.main(["--model-path", best, *common, "--output", str(tmp_path / "ap.csv")])
        tags = infer.main(["--model_path", best, "--pic_path", os.path.join(data, "val"), "--dataset_type",
                           "csv", "--th", "0", "--top_k", "2", "--device", "cpu", "--output_dir",
                           str(tmp_path / "tags")])
    sorted_names = sorted(COLOURS)  # no classes.txt: the sorted names of train.csv
    assert prior["class_names"] == sorted_names and len(prior["prior"]) == 3
    assert 0 <= result["mAP"] <= 100
    assert ("partial mAP" in capsys.readouterr().out) is (layout == "wide")  # val.csv's -1: partial AP
    assert prior["report"] is None  # train.csv leaves labels unknown: no truth to rank the prior against
    assert len(tags) == 8
    assert all(len(t["tags"]) == 2 and {name for name, _ in t["tags"]} <= set(COLOURS) for t in tags)
    with open(tmp_path / "tags" / "predictions.csv", encoding="utf-8") as handle:
        assert {row.split(",")[2] for row in handle.read().splitlines()[1:]} <= set(sorted_names)


def test_prior_of_a_complete_csv_is_ranked_against_its_labels(tmp_path, capsys):
    """A CSV without -1 holds the full labels: python -m src.prior ranks the prior of an fpc draw on it."""
    out = str(tmp_path / "emb")
    embedded_main(["--out", out, "--n_train", "40", "--n_test", "16", "--format", "csv", "--layout", "wide"])
    common = ["--data", out, "--dataset_type", "csv", "--image-size", "32", "-j", "0", "--device", "cpu",
              "--simulate_partial_type", "fpc", "--simulate_partial_param", "2"]
    with single_thread():
        train.main([*common, "--model-path", "none", "--model-name", TINY_MODEL, "--num-classes", "48",
                    "--epochs", "1", "-b", "16", "--partial_loss_mode", "ignore", "--path_dest",
                    str(tmp_path / "run")])
        prior = prior_main(["--model_path", str(tmp_path / "run" / "best.pth"), *common])
    assert prior["report"] is not None and "true frequency" in capsys.readouterr().out


# ------------------------------------------------------------------------- docs/your_data.md, as written
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALLER = {"--n_train 1000": "--n_train 160", "--n_test 300": "--n_test 32", "--epochs 5": "--epochs 1"}
IN_PROCESS = {("-m", "src.data.embedded"): embedded_main, ("-m", "src.prior"): prior_main,
              ("train.py",): train.main, ("validate.py",): validate.main, ("infer.py",): infer.main,
              ("reproduce.py",): reproduce.main}


def doc_commands() -> list[str]:
    """The commands of docs/your_data.md's bash blocks, continuation lines joined."""
    with open(os.path.join(REPO, "docs", "your_data.md"), encoding="utf-8") as handle:
        blocks = re.findall(r"```bash\n(.*?)```", handle.read(), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip()]


def test_the_commands_of_your_data_md_run_as_written(tmp_path, monkeypatch, capsys):
    """Each command of the page, in order, with fewer images and epochs: python commands in-process (the
    import costs more than the run), the shell ones (head) in bash."""
    commands = doc_commands()
    assert sum(c.startswith(".venv/bin/python") for c in commands) == 7
    script = "\n".join(commands)
    for large in SMALLER:
        assert large in script, f"docs/your_data.md no longer has {large}: update SMALLER"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "run_logged", run_in_this_process)  # reproduce.py's cells, here too
    os.symlink(os.path.join(REPO, "pics"), "pics")
    with single_thread():
        for command in commands:
            for large, small in SMALLER.items():
                command = command.replace(large, small)
            words = shlex.split(command)
            if words[0] != ".venv/bin/python":
                subprocess.run(["bash", "-c", command], check=True, stdout=subprocess.DEVNULL)
                continue
            key = next(k for k in IN_PROCESS if tuple(words[1:1 + len(k)]) == k)
            IN_PROCESS[key](words[1 + len(key):])
    out = capsys.readouterr().out
    assert "(lists layout)" in out and "chosen on the held-out split" in out and "mAP" in out
    with open("data/my_csv/classes.txt", encoding="utf-8") as handle:
        classes = handle.read().split()
    with open("outputs/my_tags/predictions.csv", encoding="utf-8") as handle:
        rows = handle.read().splitlines()[1:]
    assert len(rows) >= 4 and {row.split(",")[2] for row in rows if row.split(",")[2]} <= set(classes)
    assert os.path.isfile("outputs/my_prior.csv")
    assert os.path.isfile("outputs/my_stage2/best_csv_per_class_ap.csv")
    with open("outputs/my_table/results.json", encoding="utf-8") as handle:
        table = json.load(handle)["table"]
    assert [(row["row"], row["scheme"]) for row in table] == [
        ("ignore_ce", "given"), ("negative_ce", "given"), ("csl", "given")]
