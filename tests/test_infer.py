"""infer.py: tags equal an independent forward pass, annotated pictures and CSV are written, the paper's
checkpoint format and class descriptions work, bad inputs give clear errors; the shipped pics/."""

from __future__ import annotations

import argparse
import csv
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import infer
from src.models import create_model, load_model
from src.utils.cli import ConfigError
from tests.conftest import TINY_IMAGE_SIZE, TINY_MODEL
from tests.test_validate import embedded_split, manual_scores, save_tiny_checkpoint

PICS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pics")


@pytest.fixture
def two_pictures(embedded_data_dir, tmp_path):
    """Folder with two embedded scenes (one stored grayscale + alpha, which the paper's code would reject)
    and a text file that must be skipped."""
    names, paths, _ = embedded_split(embedded_data_dir)
    folder = tmp_path / "pictures"
    folder.mkdir()
    shutil.copy(paths[0], folder / "a.png")
    Image.open(paths[1]).convert("LA").save(folder / "b.png")
    (folder / "notes.txt").write_text("not a picture")
    return names, folder


def run_infer(checkpoint, pic_path, out_dir, *extra):
    return infer.main(["--model_path", str(checkpoint), "--pic_path", str(pic_path), "--input_size",
                       str(TINY_IMAGE_SIZE), "--output_dir", str(out_dir), "--device", "cpu", *extra])


def test_folder_tags_match_manual_forward_pass(two_pictures, tmp_path, capsys):
    names, folder = two_pictures
    model = save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    pictures = [str(folder / "a.png"), str(folder / "b.png")]
    scores = manual_scores(model, pictures)
    results = run_infer(tmp_path / "tiny.pth", folder, tmp_path / "out", "--th", "0", "--top_k", "3")
    out = capsys.readouterr().out

    assert [r["picture"] for r in results] == pictures  # notes.txt skipped, sorted order
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 6
    for i, result in enumerate(results):
        expected = np.argsort(-scores[i])[:3]
        assert [name for name, _ in result["tags"]] == [names[c] for c in expected]
        np.testing.assert_allclose([s for _, s in result["tags"]], scores[i][expected], atol=1e-5)
        first_name, first_score = result["tags"][0]
        assert f"{pictures[i]}: {first_name} ({first_score:.3f})" in out
        assert [r["class"] for r in rows[3 * i:3 * i + 3]] == [n for n, _ in result["tags"]]
        drawn = Image.open(result["output"])
        assert os.path.basename(result["output"]) == ["a_tags.png", "b_tags.png"][i]
        # 32 px enlarged 12x to 384 px, plus the text panel (title + 3 tags) below it
        assert drawn.size == (384, 384 + 10 + 22 * 4)


def test_threshold_and_top_k(two_pictures, tmp_path):
    names, folder = two_pictures
    model = save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    scores = manual_scores(model, [str(folder / "a.png")])[0]
    order = np.argsort(-scores)
    threshold = (scores[order[1]] + scores[order[2]]) / 2  # exactly two classes score above it
    results = run_infer(tmp_path / "tiny.pth", folder / "a.png", tmp_path / "out", "--th", str(threshold))
    assert [name for name, _ in results[0]["tags"]] == [names[c] for c in order[:2]]
    results = run_infer(tmp_path / "tiny.pth", folder / "a.png", tmp_path / "out", "--th", "0",
                        "--top-k", "4.0")  # kebab spelling; the paper declared top_k as a float
    assert [name for name, _ in results[0]["tags"]] == [names[c] for c in order[:4]]
    np.testing.assert_allclose([score for _, score in results[0]["tags"]], scores[order[:4]], atol=1e-5)
    results = run_infer(tmp_path / "tiny.pth", folder / "a.png", tmp_path / "out", "--th", "1")
    assert results[0]["tags"] == []  # nothing drawn but the "no class" line; no crash


def test_paper_checkpoint_with_mids_and_descriptions(two_pictures, tmp_path, capsys):
    _, folder = two_pictures
    torch.manual_seed(0)
    model = create_model(model_name=TINY_MODEL, num_classes=4)
    mids = ["/m/01", "/m/02", "/m/03", "/m/04"]
    torch.save({"model": model.state_dict(), "num_classes": 4, "idx_to_class": dict(enumerate(mids))},
               tmp_path / "paper.pth")
    descriptions = tmp_path / "descriptions.csv"
    descriptions.write_text("LabelName,DisplayName\n/m/01,Cat\n/m/02,Dog\n/m/03,Tree\n/m/99,Boat\n")
    paper_flags = ["--model-name", TINY_MODEL, "--class-description-path", str(descriptions)]
    results = run_infer(tmp_path / "paper.pth", folder / "a.png", tmp_path / "out", *paper_flags,
                        "--th", "0", "--top_k", "4")
    assert sorted(name for name, _ in results[0]["tags"]) == ["/m/04", "Cat", "Dog", "Tree"]
    assert "1 of 4 classes are not in" in capsys.readouterr().out
    assert infer.read_class_descriptions(str(descriptions)) == {"/m/01": "Cat", "/m/02": "Dog",
                                                                "/m/03": "Tree", "/m/99": "Boat"}
    # Not a TResNet and no stored model_name: the architecture must be named.
    with pytest.raises(ValueError, match="model_name"):
        run_infer(tmp_path / "paper.pth", folder / "a.png", tmp_path / "out")
    unrelated = tmp_path / "unrelated.csv"
    unrelated.write_text("LabelName,DisplayName\n/m/77,Car\n")
    with pytest.raises(ValueError, match="none of the model's classes"):
        run_infer(tmp_path / "paper.pth", folder / "a.png", tmp_path / "out", "--model_name", TINY_MODEL,
                  "--class_description_path", str(unrelated))


def test_errors(two_pictures, tmp_path, capsys):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    with pytest.raises(FileNotFoundError, match="--pic_path: .*nowhere.png"):
        run_infer(tmp_path / "tiny.pth", tmp_path / "nowhere.png", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no picture"):
        run_infer(tmp_path / "tiny.pth", tmp_path / "empty", tmp_path / "out")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="broken.png' is not a picture PIL can read"):
        run_infer(tmp_path / "tiny.pth", tmp_path / "broken.png", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="--model_path: checkpoint"):
        run_infer(tmp_path / "missing.pth", folder, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="--class_description_path"):
        run_infer(tmp_path / "tiny.pth", folder, tmp_path / "out", "--class_description_path",
                  str(tmp_path / "none.csv"))
    with pytest.raises(SystemExit):  # src.args.probability: "argument --th: must be a probability"
        run_infer(tmp_path / "tiny.pth", folder, tmp_path / "out", "--th", "1.5")
    assert "argument --th: must be a probability in [0, 1], got 1.5" in capsys.readouterr().err
    argv = ["--model_path", str(tmp_path / "tiny.pth"), "--pic_path", str(tmp_path / "broken.png"),
            "--output_dir", str(tmp_path / "cli_out")]
    assert infer.cli(argv) == 2
    assert not os.path.exists(tmp_path / "cli_out")
    assert "error: --pic_path" in capsys.readouterr().err


def test_paper_flags_and_defaults():
    args = infer.build_parser().parse_args([])
    # --input_size None: the checkpoint's size, else the paper's 224 (test_input_size_from_the_checkpoint)
    assert (args.model_path, args.model_name, args.input_size, args.th, args.top_k) == (
        infer.PAPER_MODEL_PATH, None, None, 0.97, 30)
    assert infer.PAPER_MODEL_PATH == "./models_local/mtresnet_opim_86.72.pth"  # the paper's, as a flag:
    assert infer.build_parser().parse_args(["--model_path", "./models/m.pth"]).model_path == "./models/m.pth"
    assert infer.PAPER_INPUT_SIZE == 224
    assert args.dataset_type == "openimages" and args.pic_path == "./pics" and args.device == "auto"
    assert (args.amp, args.amp_dtype) == (None, "float16")  # src.args.device_parser: AMP off on CPU
    # The paper's default value had a typo; it still parses.
    assert infer.build_parser().parse_args(["--dataset_type", "OpenImagess"]).dataset_type == "openimages"
    assert infer.build_parser().parse_args(["--dataset_type", "MS-COCO"]).dataset_type == "coco"
    with pytest.raises(SystemExit):
        infer.build_parser().parse_args(["--dataset_type", "imagenet"])


def test_shipped_pictures_and_smoke_run_checkpoint(stage1_run, tmp_path):
    pictures = sorted(p for p in os.listdir(PICS_DIR) if p.endswith(".png"))
    readme = open(os.path.join(PICS_DIR, "README.md")).read()
    assert pictures and all(f"`{p}`" in readme for p in pictures)
    assert sum(os.path.getsize(os.path.join(PICS_DIR, p)) for p in os.listdir(PICS_DIR)) < 300_000
    results = run_infer(stage1_run["best"], PICS_DIR, tmp_path / "out", "--th", "0.5")
    assert [os.path.basename(r["picture"]) for r in results] == pictures
    # The tags of the trained model equal those of an independent forward pass (PIL resize, sigmoid).
    model, names = load_model(stage1_run["best"])
    scores = manual_scores(model, [os.path.join(PICS_DIR, p) for p in pictures])
    for result, row in zip(results, scores, strict=True):
        expected = [c for c in np.argsort(-row, kind="stable")[:30] if row[c] > 0.5]
        assert [name for name, _ in result["tags"]] == [names[c] for c in expected]
        np.testing.assert_allclose([score for _, score in result["tags"]], row[expected], atol=1e-5)
        width, height = Image.open(result["picture"]).size  # enlarged to >= 384 px, then the text panel
        scale = max(1, -(-384 // min(width, height)))
        assert Image.open(result["output"]).size == (width * scale,
                                                     height * scale + 10 + 22 * (1 + max(1, len(expected))))


# --------------------------------------------------------------------------- review fixes
def read_predictions(path):
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def test_folder_skips_unreadable_pictures_and_single_one_is_an_error(two_pictures, tmp_path, capsys,
                                                                     monkeypatch):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    (folder / "0bad.png").write_bytes(b"not a png at all")  # sorted first: the good ones must still run
    results = run_infer(tmp_path / "tiny.pth", folder, tmp_path / "out", "--th", "0", "--top_k", "2")
    captured = capsys.readouterr()
    assert [r["picture"] for r in results] == [str(folder / "a.png"), str(folder / "b.png")]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "0bad.png'" in warnings[0] and "not a picture PIL can read" in warnings[0]
    rows = read_predictions(tmp_path / "out" / "predictions.csv")
    assert [r["image"] for r in rows] == [str(folder / "a.png")] * 2 + [str(folder / "b.png")] * 2
    # A folder of unreadable pictures only: an error, and no output folder.
    (tmp_path / "bad_only").mkdir()
    (tmp_path / "bad_only" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="none of the 1 picture"):
        run_infer(tmp_path / "tiny.pth", tmp_path / "bad_only", tmp_path / "bad_out")
    assert not os.path.exists(tmp_path / "bad_out")
    assert "warning: skipped" in capsys.readouterr().err
    # Decoding goes through load_rgb: a decompression bomb is a one-line error (exit 2), not a traceback.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 > 2 x 100: DecompressionBombError
    argv = ["--model_path", str(tmp_path / "tiny.pth"), "--pic_path", str(folder / "a.png"), "--input_size",
            str(TINY_IMAGE_SIZE), "--output_dir", str(tmp_path / "bomb_out"), "--device", "cpu"]
    assert infer.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --pic_path: ") and "a.png' is not a picture" in err
    assert "decompression bomb" in err and not os.path.exists(tmp_path / "bomb_out")


def test_predictions_are_written_as_pictures_are_done(two_pictures, tmp_path, monkeypatch):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    draw = infer.draw_tags

    def fail_on_second(picture, tags, threshold, calls=[]):  # noqa: B006 (call counter)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return draw(picture, tags, threshold)

    monkeypatch.setattr(infer, "draw_tags", fail_on_second)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_infer(tmp_path / "tiny.pth", folder, tmp_path / "out", "--th", "0", "--top_k", "2")
    rows = read_predictions(tmp_path / "out" / "predictions.csv")
    assert [(r["image"], r["rank"]) for r in rows] == [(str(folder / "a.png"), rank) for rank in ("1", "2")]


def test_rerun_into_the_picture_folder_skips_its_own_outputs(two_pictures, tmp_path, capsys):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    first = run_infer(tmp_path / "tiny.pth", folder, folder, "--th", "0", "--top_k", "2")
    assert sorted(os.listdir(folder)) == ["a.png", "a_tags.png", "b.png", "b_tags.png", "notes.txt",
                                          "predictions.csv"]
    second = run_infer(tmp_path / "tiny.pth", folder, folder, "--th", "0", "--top_k", "2")
    assert [r["picture"] for r in second] == [r["picture"] for r in first]
    assert [r["tags"] for r in second] == [r["tags"] for r in first]
    assert "skipped 2 annotated picture(s)" in capsys.readouterr().out
    assert len(read_predictions(folder / "predictions.csv")) == 4
    # Only *_tags.png files left: nothing to tag.
    for name in ("a.png", "b.png"):
        os.remove(folder / name)
    with pytest.raises(ValueError, match="holds no picture"):
        run_infer(tmp_path / "tiny.pth", folder, folder)


def test_file_name_that_is_not_utf8(two_pictures, tmp_path, capsys):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    try:
        with open(odd, "wb") as handle:
            handle.write((folder / "a.png").read_bytes())
    except OSError:
        pytest.skip("the file system rejects file names that are not UTF-8")
    os.remove(folder / "b.png")
    results = run_infer(tmp_path / "tiny.pth", folder, tmp_path / "out", "--th", "0", "--top_k", "1")
    odd_path = os.fsdecode(odd)
    assert [r["picture"] for r in results] == [str(folder / "a.png"), odd_path]
    assert results[0]["tags"] == results[1]["tags"]  # same pixels
    assert os.path.isfile(results[1]["output"])
    assert f"{odd_path!r}: {results[1]['tags'][0][0]}" in capsys.readouterr().out
    rows = read_predictions(tmp_path / "out" / "predictions.csv")
    assert [r["image"] for r in rows] == [str(folder / "a.png"), odd_path]  # the name survives
    assert odd in (tmp_path / "out" / "predictions.csv").read_bytes()


def test_picture_without_tags_gets_an_empty_row(two_pictures, tmp_path):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    results = run_infer(tmp_path / "tiny.pth", folder, tmp_path / "out", "--th", "1")
    assert [r["tags"] for r in results] == [[], []]
    rows = read_predictions(tmp_path / "out" / "predictions.csv")
    assert rows == [{"image": str(folder / name), "rank": "", "class": "", "score": ""}
                    for name in ("a.png", "b.png")]


def test_class_descriptions_use_the_openimages_reader(two_pictures, tmp_path, capsys):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text("LabelName,DisplayName\n/m/01,'Cat'\n /m/02 ,Dog\n/m/03,\n")
    assert infer.read_class_descriptions(str(quoted)) == {"/m/01": "Cat", "/m/02": "Dog"}  # no empty name
    duplicated = tmp_path / "duplicated.csv"
    duplicated.write_text("LabelName,DisplayName\n/m/01,Cat\n/m/01,Dog\n")
    with pytest.raises(ValueError, match="--class_description_path: .*duplicated.csv: .*repeats some MIDs"):
        infer.read_class_descriptions(str(duplicated))
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("LabelName,DisplayName\n/m/01,Cat\n/m/02,Dog,Extra\n")
    with pytest.raises(ValueError, match="--class_description_path: '.*malformed.csv' is not a UTF-8 CSV"):
        infer.read_class_descriptions(str(malformed))
    argv = ["--model_path", str(tmp_path / "tiny.pth"), "--pic_path", str(folder / "a.png"),
            "--class_description_path", str(malformed), "--output_dir", str(tmp_path / "out")]
    assert infer.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "malformed.csv" in err


def test_eval_transform_built_once_and_input_size_checked(two_pictures, tmp_path, monkeypatch):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    calls = []
    build = infer.build_val_transform
    monkeypatch.setattr(infer, "build_val_transform", lambda *a, **k: calls.append(a) or build(*a, **k))
    results = run_infer(tmp_path / "tiny.pth", folder, tmp_path / "out")
    assert len(results) == 2 and calls == [(TINY_IMAGE_SIZE,)]
    with pytest.raises(SystemExit):  # src.args.positive_int
        infer.main(["--model_path", str(tmp_path / "tiny.pth"), "--pic_path", str(folder),
                    "--input_size", "0"])


def save_non_finite_checkpoint(path, names, key_part: str, value: float):
    """The tiny checkpoint with every tensor whose name contains ``key_part`` set to ``value``."""
    model = save_tiny_checkpoint(path, names)
    state = model.state_dict()
    changed = [key for key in state if key_part in key and state[key].is_floating_point()]
    assert changed
    for key in changed:
        state[key].fill_(value)
    torch.save({"model": state, "model_name": TINY_MODEL, "num_classes": len(names),
                "do_bottleneck_head": False, "class_names": list(names)}, path)


@pytest.mark.parametrize(("key_part", "value"), [("conv1.weight", float("nan")), ("fc.bias", float("inf")),
                                                 ("fc.weight", float("nan"))])
def test_non_finite_weights_are_refused(two_pictures, tmp_path, capsys, key_part, value):
    """NaN outputs used to tag nothing (NaN > th is False) and +inf logits everything (sigmoid = 1.0),
    silently; now the run stops before writing anything, with an error naming the checkpoint."""
    names, folder = two_pictures
    save_non_finite_checkpoint(tmp_path / "bad.pth", names, key_part, value)
    with pytest.raises(ValueError, match=r"--model_path: the outputs of '.*bad.pth' contains \d+ NaN/inf "
                                         r"value\(s\) \(first at index \(0, \d+\): (nan|inf)\); the "
                                         r"checkpoint's weights hold NaN/inf"):
        run_infer(tmp_path / "bad.pth", folder, tmp_path / "out", "--th", "0.5")
    assert not os.path.exists(tmp_path / "out")
    argv = ["--model_path", str(tmp_path / "bad.pth"), "--pic_path", str(folder), "--input_size",
            str(TINY_IMAGE_SIZE), "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    assert infer.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --model_path: the outputs of") and "NaN/inf" in err


def test_output_dir_that_is_a_file_is_a_clear_error(two_pictures, tmp_path):
    names, folder = two_pictures
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    (tmp_path / "taken").write_text("")
    with pytest.raises(ValueError, match="--output_dir: .*taken' is a file, not a folder"):
        run_infer(tmp_path / "tiny.pth", folder, tmp_path / "taken")


# --------------------------------------------------------------------------- after training
def record_transform_sizes(monkeypatch) -> list:
    calls = []
    build = infer.build_val_transform
    monkeypatch.setattr(infer, "build_val_transform", lambda *a, **k: calls.append(a) or build(*a, **k))
    return calls


def test_input_size_and_class_names_from_the_checkpoint(stage1_run, embedded_data_dir, tmp_path, monkeypatch,
                                                        capsys):
    """A train.py checkpoint needs no --input_size: the size it stores (32 px here) is used, not 224."""
    stored = torch.load(stage1_run["best"], map_location="cpu", weights_only=True)
    assert stored["args"]["image_size"] == TINY_IMAGE_SIZE
    calls = record_transform_sizes(monkeypatch)
    argv = ["--model_path", stage1_run["best"], "--pic_path", PICS_DIR, "--device", "cpu", "--th", "0.5"]
    results = infer.main([*argv, "--output_dir", str(tmp_path / "auto")])
    assert calls == [(TINY_IMAGE_SIZE,)]
    assert (f"settings: image_size {TINY_IMAGE_SIZE} (checkpoint), model {TINY_MODEL} (checkpoint), classes "
            f"{len(stored['class_names'])} (checkpoint)") in capsys.readouterr().out
    # Same tags as an independent forward pass at 32 px, named with the dataset's class names.
    names, _, _ = embedded_split(embedded_data_dir)
    model, _ = load_model(stage1_run["best"])
    scores = manual_scores(model, [r["picture"] for r in results], size=TINY_IMAGE_SIZE)
    for result, row in zip(results, scores, strict=True):
        expected = [c for c in np.argsort(-row, kind="stable")[:30] if row[c] > 0.5]
        assert [name for name, _ in result["tags"]] == [names[c] for c in expected]
    # An explicit --input_size still wins.
    calls.clear()
    infer.main([*argv, "--input_size", "48", "--output_dir", str(tmp_path / "given")])
    out = capsys.readouterr().out
    assert calls == [(48,)] and "settings: image_size 48 (flag)" in out
    assert f"--input_size 48 given; the checkpoint was trained at {TINY_IMAGE_SIZE}: evaluating at 48" in out
    refused = r"holds a test_resnet .*--model_name says 'resnet18'; drop --model_name"
    with pytest.raises(ConfigError, match=refused):
        infer.main([*argv, "--model_name", "resnet18", "--output_dir", str(tmp_path / "given")])


def test_checkpoint_without_a_size_uses_the_papers_224_and_a_bad_size_is_an_error(two_pictures, tmp_path,
                                                                                   monkeypatch, capsys):
    names, folder = two_pictures
    model = save_tiny_checkpoint(tmp_path / "plain.pth", names)  # the paper's format: no "args"
    calls = record_transform_sizes(monkeypatch)
    infer.main(["--model_path", str(tmp_path / "plain.pth"), "--pic_path", str(folder / "a.png"),
                "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--th", "0"])
    assert calls == [(224,)] and "settings: image_size 224 (default)" in capsys.readouterr().out
    # Older files stored the configuration as an argparse.Namespace: read as well.
    torch.save({"model": model.state_dict(), "model_name": TINY_MODEL, "num_classes": len(names),
                "class_names": list(names), "args": argparse.Namespace(image_size=40)}, tmp_path / "ns.pth")
    calls.clear()
    infer.main(["--model_path", str(tmp_path / "ns.pth"), "--pic_path", str(folder / "a.png"),
                "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--th", "0"])
    assert calls == [(40,)]
    torch.save({"model": model.state_dict(), "model_name": TINY_MODEL, "num_classes": len(names),
                "class_names": list(names), "args": {"image_size": "big"}}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="odd.pth' stores image_size 'big'.*; pass --input_size"):
        infer.main(["--model_path", str(tmp_path / "odd.pth"), "--pic_path", str(folder)])


def save_silent_checkpoint(path, names, size: int) -> None:
    """The tiny model with its classifier bias at -20: every score is ~2e-9, nothing passes any --th."""
    model = save_tiny_checkpoint(path, names)
    state = model.state_dict()
    state["fc.bias"].fill_(-20.0)
    torch.save({"model": state, "model_name": TINY_MODEL, "num_classes": len(names),
                "class_names": list(names), "args": {"image_size": size}}, path)


def test_warning_when_no_picture_gets_a_tag(two_pictures, tmp_path, capsys):
    names, folder = two_pictures
    save_silent_checkpoint(tmp_path / "silent.pth", names, TINY_IMAGE_SIZE)
    argv = ["--model_path", str(tmp_path / "silent.pth"), "--pic_path", str(folder), "--device", "cpu",
            "--output_dir", str(tmp_path / "out")]
    results = infer.main(argv)  # the paper's --th 0.97
    assert [r["tags"] for r in results] == [[], []]
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning: none of")]
    assert warning == ["warning: none of the 2 picture(s) got a tag: no class scored above --th 0.97 (the "
                       "paper's threshold, set for its released OpenImages models). For a model trained here "
                       "try --th 0.5 (train.py's --thre), or lower"]
    infer.main([*argv, "--th", "0.4"])
    assert "Try a lower threshold, e.g. --th 0.2" in capsys.readouterr().err
    # One tagged picture is enough: no warning.
    save_tiny_checkpoint(tmp_path / "tiny.pth", names)
    infer.main(["--model_path", str(tmp_path / "tiny.pth"), "--pic_path", str(folder), "--device", "cpu",
                "--output_dir", str(tmp_path / "out2"), "--th", "0"])
    assert "warning: none of" not in capsys.readouterr().err
