"""validate.py: metrics equal src.metrics on independently computed predictions; partial labels (LVIS
layout) report skipped classes and frequency groups; errors; a checkpoint of the stage-1 smoke run."""

from __future__ import annotations

import csv
import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train
import validate
from src import prior_command
from src.metrics import (
    average_precision_per_class,
    mean_average_precision,
    partial_average_precision,
    threshold_metrics,
    topk_metrics,
)
from src.models import create_model, load_model, load_model_for_command
from src.utils.cli import ConfigError
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

    expected_map = mean_average_precision(labels, scores)
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
    expected_ap = 100 * average_precision_per_class(labels, scores)
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

    expected = partial_average_precision(labels, scores)
    ap, expected_map = expected.ap_per_class, expected.mAP
    n_no_labels, n_no_neg, n_no_pos = (expected.skipped_no_labels, expected.skipped_no_negatives,
                                       expected.skipped_no_positives)
    assert n_no_labels >= 1 and n_no_neg >= 1  # classes 0 and 1 by construction
    assert result["mAP"] == pytest.approx(expected_map, abs=1e-3)
    assert result["mAP_weighted"] == pytest.approx(expected.mAP_weighted, abs=1e-3)
    assert (result["skipped_no_labels"], result["skipped_no_negatives"], result["skipped_no_positives"]) == (
        n_no_labels, n_no_neg, n_no_pos)
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


def save_sized_checkpoint(path, class_names, size: int) -> torch.nn.Module:
    """The tiny model as train.py stores it: its resolved flags under ``args``, with the image size."""
    model = save_tiny_checkpoint(path, class_names)
    checkpoint = torch.load(path, weights_only=True)
    torch.save({**checkpoint, "args": {"image_size": size, "model_name": TINY_MODEL}}, path)
    return model


def test_image_size_comes_from_the_checkpoint(embedded_data_dir, tmp_path, capsys):
    """A 32-px checkpoint is evaluated at 32 px without --image-size (not at the paper's 448): the same
    numbers as with --image-size 32 and as an independent forward pass at 32 px. Another size is used, with
    one line saying so."""
    names, paths, labels = embedded_split(embedded_data_dir)
    model = save_sized_checkpoint(tmp_path / "sized.pth", names, TINY_IMAGE_SIZE)
    argv = base_argv(embedded_data_dir, tmp_path / "sized.pth", tmp_path / "ap.csv")
    assert argv[4:6] == ["--image-size", str(TINY_IMAGE_SIZE)]
    without = validate.main(argv[:4] + argv[6:])
    out = capsys.readouterr().out
    assert (f"settings: image_size {TINY_IMAGE_SIZE} (checkpoint), model {TINY_MODEL} (checkpoint), classes "
            f"{len(names)} (checkpoint), bottleneck head False (checkpoint), batch 16 (flag)") in out
    assert f"validation images at {TINY_IMAGE_SIZE} px" in out and "given;" not in out
    given = validate.main(argv)
    assert given["mAP"] == without["mAP"] == pytest.approx(
        mean_average_precision(labels, manual_scores(model, paths, size=TINY_IMAGE_SIZE)), abs=1e-3)
    assert f"settings: image_size {TINY_IMAGE_SIZE} (flag)" in capsys.readouterr().out
    other = validate.main([*argv[:4], "--image-size", "48", *argv[6:]])
    out = capsys.readouterr().out
    assert f"--image-size 48 given; the checkpoint was trained at {TINY_IMAGE_SIZE}: evaluating at 48" in out
    assert other["mAP"] == pytest.approx(
        mean_average_precision(labels, manual_scores(model, paths, size=48)), abs=1e-3)
    # A checkpoint that records no size (the paper's layout) keeps the default, 448.
    save_tiny_checkpoint(tmp_path / "plain.pth", names)
    args = validate.build_parser().parse_args(["--model-path", str(tmp_path / "plain.pth")])
    loaded = load_model_for_command(args, validate.SETTING_FLAGS, validate.PAPER_DEFAULTS)
    assert (args.image_size, args.batch_size, args.model_name) == (448, 32, TINY_MODEL)
    assert loaded.report().startswith("settings: image_size 448 (default), model test_resnet (checkpoint)")


def test_errors(embedded_data_dir, tmp_path, capsys):
    names = embedded_split(embedded_data_dir)[0]
    argv = base_argv(embedded_data_dir, tmp_path / "missing.pth", tmp_path / "ap.csv")
    with pytest.raises(FileNotFoundError, match="--model-path: checkpoint .*missing.pth"):
        validate.main(argv)
    assert validate.cli(argv) == 2
    assert "error: --model-path" in capsys.readouterr().err

    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"--model-path: '.*notes.pth' is not a readable torch file"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "notes.pth", tmp_path / "ap.csv"))
    save_tiny_checkpoint(tmp_path / "five.pth", names[:5])
    with pytest.raises(ValueError, match="predicts 5 classes but the coco validation set .* has 48"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "five.pth", tmp_path / "ap.csv"))
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    with pytest.raises(ConfigError, match=r"--num-classes 7 contradicts the checkpoint .*tiny.pth', which "
                                          r"holds num_classes 48: .*drop --num-classes"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "ap.csv")
                      + ["--num_classes", "7"])
    save_tiny_checkpoint(tmp_path / "shuffled.pth", names[::-1])
    with pytest.raises(ValueError, match="another order"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "shuffled.pth", tmp_path / "ap.csv"))
    refused = r"holds a test_resnet .*--model-name says 'resnet18'; drop --model-name"
    with pytest.raises(ConfigError, match=refused):
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "ap.csv")
                      + ["--model-name", "resnet18"])
    with pytest.raises(SystemExit):  # src.args.probability
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "ap.csv")
                      + ["--thre", "2"])
    assert "argument --thre: must be a probability in [0, 1], got 2" in capsys.readouterr().err
    assert len(names) == EMBEDDED_NUM_CLASSES


def test_checkpoint_of_the_smoke_run(stage1_run, embedded_data_dir, tmp_path):
    """best.pth holds the selected weights: validate.py reproduces the mAP train.py reported for it."""
    argv = base_argv(embedded_data_dir, stage1_run["best"], tmp_path / "ap.csv")
    result = validate.main(argv)
    assert result["mAP"] == pytest.approx(stage1_run["summary"]["best_test_mAP"], abs=1e-3)
    # Without --image-size: the 32 px the checkpoint records (the paper's 448 would give another mAP)
    assert argv[4:6] == ["--image-size", str(TINY_IMAGE_SIZE)]
    assert validate.main(argv[:4] + argv[6:])["mAP"] == result["mAP"]
    ema_argv = base_argv(embedded_data_dir, stage1_run["last"], tmp_path / "ema.csv") + ["--use_ema"]
    ema = validate.main(ema_argv)
    # --use_ema evaluates the EMA weights of last.pth: the mAP of an independent forward pass with them
    names, paths, labels = embedded_split(embedded_data_dir)
    ema_model, _ = load_model(stage1_run["last"], use_ema=True)
    ema_scores = manual_scores(ema_model, paths)
    assert ema["mAP"] == pytest.approx(mean_average_precision(labels, ema_scores), abs=1e-3)
    rows = read_csv(tmp_path / "ema.csv")
    np.testing.assert_allclose([float(r["AP"]) for r in rows],
                               100 * average_precision_per_class(labels, ema_scores), atol=1e-3)


def test_model_path_as_a_url_evaluates_like_the_file(stage1_run, embedded_data_dir, tmp_path,
                                                      monkeypatch):
    """--model-path file:///.../best.pth (any URL form) skips the local-file check and is read in place (no
    cached copy); the result equals the local path's, and the default output is named after the weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.chdir(tmp_path)
    url = "file://" + os.path.abspath(stage1_run["best"])
    result = validate.main(["--model-path", url, "--data", embedded_data_dir, "--image-size", "32", "-j", "0",
                            "-b", "16", "--device", "cpu"])
    assert result["mAP"] == pytest.approx(stage1_run["summary"]["best_test_mAP"], abs=1e-3)
    # A file:// checkpoint's outputs go next to it, as a plain path's do (two runs' best.pth never share one).
    assert result["output"] == os.path.join(os.path.dirname(os.path.abspath(stage1_run["best"])),
                                            "best_coco_per_class_ap.csv")
    assert not os.path.exists(tmp_path / "torch_home")


def test_two_runs_best_pth_as_file_urls_evaluate_as_themselves(stage1_run, embedded_data_dir, tmp_path,
                                                                monkeypatch):
    """Two checkpoints both named best.pth, in two run folders, given in turn as file:// URLs: each is
    evaluated (and its per-class file written) as itself - nothing is cached under the shared name."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    checkpoint = torch.load(stage1_run["best"], map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    checkpoint["model"] = {name: tensor + 0.5 * torch.randn(tensor.shape, generator=generator)
                           if tensor.dim() > 1 else tensor  # conv and linear weights; not BN statistics
                           for name, tensor in checkpoint["model"].items()}
    (tmp_path / "run_b").mkdir()
    torch.save(checkpoint, tmp_path / "run_b" / "best.pth")
    common = ["--data", embedded_data_dir, "-j", "0", "-b", "16", "--device", "cpu"]
    results = {}
    runs = {"a": os.path.abspath(stage1_run["best"]), "b": str(tmp_path / "run_b" / "best.pth")}
    for name, path in runs.items():
        by_url = validate.main(["--model-path", "file://" + path, *common])
        by_path = validate.main(["--model-path", path, *common])
        assert by_url["mAP"] == pytest.approx(by_path["mAP"], abs=1e-9)
        assert os.path.dirname(by_url["output"]) == os.path.dirname(path)
        results[name] = by_url["mAP"]
    assert results["a"] == pytest.approx(stage1_run["summary"]["best_test_mAP"], abs=1e-3)
    assert results["a"] != pytest.approx(results["b"], abs=1e-3)


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

    monkeypatch.setattr(validate, "init_distributed", no_work)
    (tmp_path / "folder").mkdir()
    argv = base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "folder")
    with pytest.raises(ValueError, match=r"--output: .*folder' is a folder, not a file; pass a file path "
                                         r"such as .*tiny_coco_per_class_ap.csv"):
        validate.main(argv)
    assert validate.cli(argv) == 2
    err = capsys.readouterr().err
    assert "error: --output" in err and "Traceback" not in err
    (tmp_path / "plain_file").write_text("")
    with pytest.raises(ValueError, match="--output: .*plain_file' is a file, not a folder"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "plain_file" / "x.csv"))
    with pytest.raises(ValueError, match="--output: cannot create the folder .*plain_file/sub"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth",
                                tmp_path / "plain_file" / "sub" / "x.csv"))
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
        expected_ap = 100 * average_precision_per_class(labels, manual_scores(model, paths))
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
    monkeypatch.setattr(validate, "init_distributed", lambda device, timeout_s=None: ctx)
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
    from src.utils.io import prepare_output_file

    target = tmp_path / "a" / "b" / "out.csv"
    assert prepare_output_file(str(target), "--output") == str(target)
    assert (tmp_path / "a" / "b").is_dir() and not target.exists()  # the folder, not the file
    with pytest.raises(ValueError, match="--x: .* is a folder"):
        prepare_output_file(str(tmp_path / "a") + os.sep, "--x")  # a trailing separator names a folder


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_checkpoint_with_non_finite_weights_is_refused(embedded_data_dir, tmp_path, bad_value):
    """NaN/inf weights give NaN outputs; the metrics' finiteness check (shared with infer.py) refuses them."""
    names = embedded_split(embedded_data_dir)[0]
    model = save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    state = model.state_dict()
    first_weight = next(key for key, value in state.items() if value.dim() == 4)
    state[first_weight].fill_(bad_value)
    checkpoint = torch.load(tmp_path / "tiny.pth", weights_only=False)
    checkpoint["model"] = state
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"predictions contains \d+ NaN/inf value\(s\)"):
        validate.main(base_argv(embedded_data_dir, tmp_path / "bad.pth", tmp_path / "ap.csv"))
    assert not (tmp_path / "ap.csv").exists()


def test_flags_come_from_the_shared_parent_parsers():
    """validate.py declares only its own flags; the rest are src.args' parents (one declaration each)."""
    from src.args import data_parser, device_parser, eval_weights_parser, model_parser

    parser = validate.build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    for parent in (data_parser(), model_parser(path_default=None), eval_weights_parser(), device_parser()):
        for action in parent._actions:
            assert set(action.option_strings) <= options
    own = {"--num-classes", "--num_classes", "--thre", "--top_k", "--top-k", "--print-freq", "--print_freq",
           "-p", "--output", "-h", "--help"}
    shared = {option for parent in (data_parser(), model_parser(path_default=None), eval_weights_parser(),
                                    device_parser()) for action in parent._actions
              for option in action.option_strings}
    assert options == shared | own
    args = parser.parse_args(["--model-path", "x.pth"])
    # image size, architecture and batch: None = not given (the checkpoint's, else validate.PAPER_DEFAULTS)
    assert (args.image_size, args.batch_size, args.model_name) == (None, None, None)
    assert validate.PAPER_DEFAULTS == {"image_size": 448, "batch_size": 32}
    assert (args.workers, args.thre, args.top_k) == (min(8, os.cpu_count()), 0.8, 3)
    assert (args.device, args.amp, args.amp_dtype, args.use_ema, args.num_classes) == (
        "auto", None, "float16", False, None)
    with pytest.raises(SystemExit):  # --model-path is required
        parser.parse_args([])


@pytest.mark.parametrize("cores", [2, 64])
def test_default_workers_never_exceed_the_cores(monkeypatch, cores):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    for parse in (validate.build_parser().parse_args, prior_command.build_parser().parse_args,
                  train.parse_args):
        assert parse(["--model-path", "x.pth"]).workers == min(8, cores)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_only_on_a_terminal(embedded_data_dir, tmp_path, monkeypatch, terminal):
    names, _, _ = embedded_split(embedded_data_dir)
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    stderr = FakeTerminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    validate.main(base_argv(embedded_data_dir, tmp_path / "tiny.pth", tmp_path / "ap.csv"))
    assert ("evaluating:   0%|          | 0/3 " in stderr.getvalue()) == terminal  # 48 images, batch 16


def test_engine_predict_and_evaluate_take_targets_first(embedded_data_dir, tmp_path):
    """src.engine's evaluation API follows src.metrics: predict -> (targets, scores), evaluate(..., *,
    threshold), evaluate(..., return_predictions=True) -> 'targets' and 'scores'."""
    from src.engine import build_eval_loader, evaluate, predict

    names, paths, labels = embedded_split(embedded_data_dir)
    model = save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    args = validate.build_parser().parse_args(base_argv(embedded_data_dir, tmp_path / "tiny.pth", "x.csv"))
    loader = build_eval_loader(validate.build_val_dataset(args), 16, 0)
    targets, scores = predict(model, loader, "cpu")
    assert targets.dtype == np.int8 and scores.dtype == np.float32
    np.testing.assert_array_equal(targets, labels)
    np.testing.assert_allclose(scores, manual_scores(model, paths), atol=1e-5)
    with pytest.raises(TypeError):
        evaluate(model, loader, "cpu", None, 0.5)  # amp_dtype and threshold are keyword-only
    result = evaluate(model, loader, "cpu", threshold=0.8)
    assert result["mAP"] == pytest.approx(mean_average_precision(labels, scores))
    assert {key: result[key] for key in ("CP", "CR", "CF1", "OP", "OR", "OF1")} == pytest.approx(
        threshold_metrics(labels, scores, threshold=0.8))
    full = evaluate(model, loader, "cpu", threshold=0.8, return_predictions=True)
    np.testing.assert_array_equal(full.pop("targets"), targets)
    np.testing.assert_array_equal(full.pop("scores"), scores)
    np.testing.assert_array_equal(full.pop("ap_per_class"), result.pop("ap_per_class"))
    assert full == result
