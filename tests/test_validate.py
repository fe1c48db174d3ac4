"""validate.py: metrics equal src.metrics on independently computed predictions; partial labels (LVIS
layout) report skipped classes and frequency groups; errors; a checkpoint of the stage-1 smoke run."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import validate
from src.metrics import AP_partial, average_precision, mAP, threshold_metrics, topk_metrics
from src.models import create_model
from tests.conftest import EMBEDDED_NUM_CLASSES, TINY_IMAGE_SIZE, TINY_MODEL


def embedded_split(data_dir: str, split: str = "val"):
    """(class names, image paths, full label matrix) read directly from the COCO JSON."""
    with open(os.path.join(data_dir, "annotations", f"instances_{split}2014.json")) as handle:
        content = json.load(handle)
    categories = sorted(content["categories"], key=lambda c: c["id"])
    column = {c["id"]: i for i, c in enumerate(categories)}
    annotated = sorted({a["image_id"] for a in content["annotations"]})
    row = {image_id: r for r, image_id in enumerate(annotated)}
    labels = np.zeros((len(annotated), len(categories)), dtype=np.int8)
    for ann in content["annotations"]:
        labels[row[ann["image_id"]], column[ann["category_id"]]] = 1
    files = {image["id"]: image["file_name"] for image in content["images"]}
    paths = [os.path.join(data_dir, f"{split}2014", files[i]) for i in annotated]
    return [c["name"] for c in categories], paths, labels


def save_tiny_checkpoint(path, class_names, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(model_name=TINY_MODEL, num_classes=len(class_names)).eval()
    torch.save({"model": model.state_dict(), "model_name": TINY_MODEL, "num_classes": len(class_names),
                "do_bottleneck_head": False, "class_names": list(class_names)}, path)
    return model


@torch.no_grad()
def manual_scores(model, paths, size: int = TINY_IMAGE_SIZE) -> np.ndarray:
    """PIL resize + [0,1] scaling + sigmoid, without the dataset, transforms or engine code."""
    images = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.sigmoid(model.eval()(torch.stack(images))).numpy()


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def base_argv(data_dir, checkpoint, output):
    return ["--data", data_dir, "--model-path", str(checkpoint), "--image-size", str(TINY_IMAGE_SIZE),
            "-b", "16", "-j", "0", "--device", "cpu", "--output", str(output)]


def test_full_labels_match_src_metrics(embedded_data_dir, tmp_path, capsys):
    names, paths, labels = embedded_split(embedded_data_dir)
    model = save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    scores = manual_scores(model, paths)
    result = validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "ap.csv"))
    out = capsys.readouterr().out

    expected_map = mAP(labels, scores)
    assert result["mAP"] == pytest.approx(expected_map, abs=1e-3)
    assert f"mAP {expected_map:.2f} (full labels" in out
    no_pos = int((labels.sum(0) == 0).sum())
    assert f"{no_pos} without positives count AP 0" in out
    for key, value in threshold_metrics(labels, scores, threshold=0.8).items():
        assert result[key] == pytest.approx(value, abs=1e-3)
    for key, value in topk_metrics(labels, scores, k=3).items():
        assert result["top_k"][key] == pytest.approx(value, abs=1e-3)

    rows = read_csv(tmp_path / "ap.csv")
    assert [r["class"] for r in rows] == names
    expected_ap = 100 * average_precision(scores, labels)
    np.testing.assert_allclose([float(r["AP"]) for r in rows], expected_ap, atol=1e-3)
    assert [int(r["n_pos"]) for r in rows] == labels.sum(0).tolist()
    assert [int(r["n_neg"]) for r in rows] == (labels == 0).sum(0).tolist()


def write_lvis_val(data_dir: str, out_dir, rng_seed: int = 0):
    """An LVIS-format val file over the embedded val images: positives from the COCO labels, a random
    half of the absent classes verified negative, the rest un-annotated; class 0 gets no label at all
    and class 1 no negative. Returns (names, paths, label matrix with -1, frequency groups)."""
    names, paths, full = embedded_split(data_dir)
    rng = np.random.default_rng(rng_seed)
    labels = np.where(full == 1, 1, np.where(rng.random(full.shape) < 0.5, 0, -1)).astype(np.int8)
    labels[:, 0] = -1
    labels[labels[:, 1] == 0, 1] = -1
    groups = ["rcf"[c % 3] for c in range(len(names))]
    categories = [{"id": c + 1, "name": n, "frequency": groups[c]} for c, n in enumerate(names)]
    images, annotations = [], []
    for r, path in enumerate(paths):
        images.append({"id": r + 1, "coco_url": f"http://example/val2014/{os.path.basename(path)}",
                       "neg_category_ids": [int(c) + 1 for c in np.flatnonzero(labels[r] == 0)],
                       "not_exhaustive_category_ids": []})
        annotations += [{"id": len(annotations) + 1, "image_id": r + 1, "category_id": int(c) + 1}
                        for c in np.flatnonzero(labels[r] == 1)]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "lvis_v1_val.json"), "w") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)
    keep = (labels != -1).any(axis=1)  # the reader drops images without any known label
    return names, [p for p, k in zip(paths, keep) if k], labels[keep], groups


def test_partial_labels_report_skipped_classes_and_groups(embedded_data_dir, tmp_path, capsys):
    names, paths, labels, groups = write_lvis_val(embedded_data_dir, tmp_path / "meta")
    model = save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    scores = manual_scores(model, paths)
    argv = base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "ap.csv")
    result = validate.main(argv + ["--dataset_type", "lvis", "--metadata", str(tmp_path / "meta")])
    out = capsys.readouterr().out

    ap, expected_map, _, n_no_labels, n_no_neg, n_no_pos = AP_partial(labels, scores)
    assert n_no_labels >= 1 and n_no_neg >= 1  # classes 0 and 1 by construction
    assert result["mAP"] == pytest.approx(expected_map, abs=1e-3)
    skipped = n_no_labels + n_no_neg + n_no_pos
    assert (f"partial mAP {expected_map:.2f} (labels contain -1: AP over annotated labels only; {skipped} of "
            f"{len(names)} classes skipped: {n_no_labels} without any annotated image, {n_no_pos} without an "
            f"annotated positive, {n_no_neg} without an annotated negative)") in out

    rows = read_csv(tmp_path / "ap.csv")
    assert rows[0]["AP"] == "" and rows[1]["AP"] == ""  # skipped classes have no AP
    assert [r["group"] for r in rows] == groups
    assert [int(r["n_unannotated"]) for r in rows] == (labels == -1).sum(0).tolist()
    for key in "rcf":
        members = np.array([ap[c] for c in range(len(names)) if groups[c] == key])
        kept = members[members >= 0]
        assert result["frequency_groups"][key]["mAP"] == pytest.approx(100 * kept.mean(), abs=1e-3)
        assert result["frequency_groups"][key]["evaluated"] == kept.size
    assert "LVIS     rare (r): mAP" in out


def test_errors(embedded_data_dir, tmp_path, capsys):
    names = embedded_split(embedded_data_dir)[0]
    argv = base_argv(embedded_data_dir, tmp_path / "missing.pth", tmp_path / "ap.csv")
    with pytest.raises(FileNotFoundError, match="--model-path: checkpoint .*missing.pth"):
        validate.main(argv)
    assert validate.cli(argv) == 2
    assert "error: --model-path" in capsys.readouterr().err

    save_tiny_checkpoint(tmp_path / "five.pth", names[:5])
    with pytest.raises(ValueError, match="predicts 5 classes but the coco validation set .* has 48"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "five.pth", tmp_path / "ap.csv"))
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    with pytest.raises(ValueError, match="--num-classes 7 does not match"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "ap.csv")
                      + ["--num_classes", "7"])
    save_tiny_checkpoint(tmp_path / "shuffled.pth", names[::-1])
    with pytest.raises(ValueError, match="another order"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "shuffled.pth", tmp_path / "ap.csv"))
    with pytest.raises(ValueError, match="--thre 2.0 is not a probability"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "ap.csv")
                      + ["--thre", "2"])
    assert len(names) == EMBEDDED_NUM_CLASSES


def test_checkpoint_of_the_smoke_run(stage1_run, embedded_data_dir, tmp_path):
    """best.pth holds the selected weights: validate.py reproduces the mAP train.py reported for it."""
    result = validate.main(base_argv(embedded_data_dir, stage1_run["best"], tmp_path / "ap.csv"))
    assert result["mAP"] == pytest.approx(stage1_run["summary"]["best_test_mAP"], abs=1e-3)
    ema_argv = base_argv(embedded_data_dir, stage1_run["last"], tmp_path / "ema.csv") + ["--use_ema"]
    ema = validate.main(ema_argv)
    assert np.isfinite(ema["mAP"]) and os.path.isfile(tmp_path / "ema.csv")


def test_openimages_split_and_unknown_mid_flags_reach_the_reader(tmp_path):
    from src.data.labels import DatasetError

    mids = ["/m/0a", "/m/0b"]
    (tmp_path / "oidv6-classes-trainable.txt").write_text("\n".join(mids) + "\n")
    (tmp_path / "test-annotations-human-imagelabels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\nt1,verification,/m/0b,1\nt1,verification,/m/0zz,1\n"
        "t2,verification,/m/0a,0\n")
    for image_id in ("t1", "t2"):
        (tmp_path / "images" / "test").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / "test" / f"{image_id}.jpg")
    argv = ["--model-path", "unused.pth", "--dataset_type", "openimages", "--data", str(tmp_path / "images"),
            "--metadata", str(tmp_path), "--openimages_val_split", "test", "--image-size", "8"]
    with pytest.warns(UserWarning, match="test-annotations-human-imagelabels.csv: skipped 1 labels"):
        dataset = validate.build_val_dataset(validate.build_parser().parse_args(argv))
    np.testing.assert_array_equal(dataset.labels.to_dense(), [[-1, 1], [0, -1]])  # the test split's labels
    with pytest.raises(DatasetError, match="MIDs that are not in the class list.*/m/0zz"):
        validate.build_val_dataset(validate.build_parser().parse_args([*argv, "--unknown_mids", "error"]))


def test_per_class_csv_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ap.csv"
    validate.write_per_class_csv(str(path), [{"class": "a", "AP": "50.0000"}, {"class": "b", "AP": ""}])
    with open(path, newline="", encoding="utf-8") as handle:
        previous = handle.read()
    assert previous == "class,AP\r\na,50.0000\r\nb,\r\n"  # the csv module's line ends, as before

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        validate.write_per_class_csv(str(path), [{"class": "c", "AP": "1.0000"}])
    with open(path, newline="", encoding="utf-8") as handle:
        assert handle.read() == previous
    assert os.listdir(tmp_path) == ["ap.csv"]  # no temp file left behind


def test_bad_output_fails_before_any_work(embedded_data_dir, tmp_path, monkeypatch, capsys):
    save_tiny_checkpoint(tmp_path / "tiny.pth", embedded_split(embedded_data_dir)[0])

    def no_work(*args, **kwargs):
        raise AssertionError("init_distributed reached")

    monkeypatch.setattr("src.utils.distributed.init_distributed", no_work)
    (tmp_path / "folder").mkdir()
    argv = base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "folder")
    with pytest.raises(ValueError, match=r"--output: .*folder' is a folder, not a file; pass a file path "
                                         r"such as .*tiny_coco_per_class_ap.csv"):
        validate.main(argv)
    assert validate.cli(argv) == 2
    err = capsys.readouterr().err
    assert "error: --output" in err and "Traceback" not in err
    (tmp_path / "plain_file").write_text("")
    with pytest.raises(ValueError, match="--output: cannot create the folder"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "plain_file" / "x.csv"))
    with pytest.raises(AssertionError, match="init_distributed reached"):  # a good path: its folder is made
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "new" / "sub" / "x.csv"))
    assert (tmp_path / "new" / "sub").is_dir()


def test_default_output_is_next_to_the_checkpoint(embedded_data_dir, tmp_path, monkeypatch):
    """Two runs' best.pth get two files (each in its run folder); EMA weights get their own name."""
    monkeypatch.chdir(tmp_path)
    names, paths, labels = embedded_split(embedded_data_dir)
    results = {}
    for seed, run in enumerate(("run1", "run2")):
        (tmp_path / run).mkdir()
        model = save_tiny_checkpoint(tmp_path / run / "best.pth", names, seed=seed)
        argv = base_argv(embedded_data_dir, tmp_path / run / "best.pth", "unused")[:-2]  # no --output
        results[run] = validate.main(argv)
        assert results[run]["output"] == str(tmp_path / run / "best_coco_per_class_ap.csv")
        expected_ap = 100 * average_precision(manual_scores(model, paths), labels)
        np.testing.assert_allclose([float(r["AP"]) for r in read_csv(results[run]["output"])], expected_ap,
                                   atol=1e-3)
        ema_args = validate.build_parser().parse_args([*argv, "--use_ema"])
        assert validate.default_output(ema_args) == str(tmp_path / run / "best_ema_coco_per_class_ap.csv")
    assert not os.path.exists(tmp_path / "outputs")


@pytest.mark.parametrize("rank", [0, 1])
def test_class_name_note_only_on_rank_0(embedded_data_dir, tmp_path, monkeypatch, capsys, rank):
    from src.utils.distributed import DistributedContext

    names = embedded_split(embedded_data_dir)[0]
    save_tiny_checkpoint(tmp_path / "renamed.pth", [f"x_{n}" for n in names])
    ctx = DistributedContext(rank=rank, world_size=2, device=torch.device("cpu"))
    monkeypatch.setattr("src.utils.distributed.init_distributed", lambda device: ctx)
    validate.main(base_argv(embedded_data_dir, tmp_path / "renamed.pth", tmp_path / "ap.csv"))
    out = capsys.readouterr().out
    assert (f"note: {len(names)} of {len(names)} class names of the checkpoint differ" in out) == (rank == 0)


def test_no_jpeg_draft_decodes_at_full_resolution(tmp_path):
    """--no-jpeg_draft: bit-exact with plain PIL decoding + torchvision Resize/ToTensor; the default
    (draft) decodes a large JPEG at reduced scale, which gives other pixels."""
    from torchvision import transforms

    (tmp_path / "oidv6-classes-trainable.txt").write_text("/m/0a\n/m/0b\n")
    (tmp_path / "test-annotations-human-imagelabels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\nt1,verification,/m/0b,1\nt2,verification,/m/0a,0\n")
    (tmp_path / "images" / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in ("t1", "t2"):
        pixels = rng.integers(0, 256, size=(160, 160, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / "test" / f"{image_id}.jpg", quality=95)
    argv = ["--model-path", "unused.pth", "--dataset_type", "openimages", "--data", str(tmp_path / "images"),
            "--metadata", str(tmp_path), "--openimages_val_split", "test", "--image-size", "8"]
    reference = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])
    exact = validate.build_val_dataset(validate.build_parser().parse_args([*argv, "--no-jpeg_draft"]))
    drafted = validate.build_val_dataset(validate.build_parser().parse_args(argv))
    for i in range(2):
        expected = reference(Image.open(exact.image_paths[i]).convert("RGB"))
        torch.testing.assert_close(exact[i][0], expected, rtol=0, atol=0)
        assert not torch.equal(drafted[i][0], expected)


def test_prepare_output_file(tmp_path):
    from src.args import prepare_output_file

    target = tmp_path / "a" / "b" / "out.csv"
    assert prepare_output_file(str(target), "--output") == str(target)
    assert (tmp_path / "a" / "b").is_dir() and not target.exists()  # the folder, not the file
    with pytest.raises(ValueError, match="--x: .* is a folder"):
        prepare_output_file(str(tmp_path / "a") + os.sep, "--x")  # a trailing separator names a folder
