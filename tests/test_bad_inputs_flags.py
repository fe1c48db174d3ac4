"""Issue 18, flags and hostile checkpoints: flags checked at the parser with their name, a loss
hyper-parameter given for another mode, crafted checkpoints refused before unpickling, escaped names, EXIF
orientation, and no empty ``error:`` for a MemoryError."""

from __future__ import annotations

import zipfile

import pytest
import torch
from PIL import Image

import infer
import train
import validate
from src import prior_command
from src.loss_functions import LOSS_HYPERPARAMETERS
from src.utils.checkpoint import CheckpointError, read_pth
from src.utils.cli import run_cli
from tests.conftest import TINY_IMAGE_SIZE
from tests.test_validate import save_tiny_checkpoint

TRAIN_BASE = ["--model-path", "none"]
VALIDATE_BASE = ["--model-path", "x.pth"]


def parse_error(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("parse", "argv", "flag", "bound"), [
    (train.parse_args, [*TRAIN_BASE, "--lr", "0"], "--lr", "> 0"),
    (train.parse_args, [*TRAIN_BASE, "--lr", "-0.01"], "--lr", "> 0"),
    (train.parse_args, [*TRAIN_BASE, "--lr", "nan"], "--lr", "> 0"),
    (train.parse_args, [*TRAIN_BASE, "--thre", "5"], "--thre", "[0, 1]"),
    (train.parse_args, [*TRAIN_BASE, "--alpha_pos", "-1"], "--alpha_pos", ">= 0"),
    (train.parse_args, [*TRAIN_BASE, "--seed", "-1"], "--seed", ">= 0"),
    (train.parse_args, [*TRAIN_BASE, "--image-size", "5000"], "--image-size", "[1, 4096]"),
    (validate.build_parser().parse_args, [*VALIDATE_BASE, "--image-size", "0"], "--image-size", "[1, 4096]"),
    (infer.build_parser().parse_args, ["--input_size", "30000"], "--input_size", "[1, 4096]"),
    (prior_command.build_parser().parse_args, [*VALIDATE_BASE, "--seed", "-1"], "--seed", ">= 0"),
])
def test_flags_are_checked_at_the_parser_with_their_name(parse, argv, flag, bound, capsys):
    err = parse_error(parse, argv, capsys)
    assert f"argument {flag}" in err and bound in err, err


def test_good_flags_still_parse():
    args = train.parse_args([*TRAIN_BASE, "--lr", "1e-3", "--thre", "1", "--alpha_pos", "0", "--seed", "7",
                             "--image-size", "4096"])
    assert (args.lr, args.thre, args.alpha_pos, args.seed, args.image_size) == (1e-3, 1.0, 0.0, 7, 4096)


def test_a_hyper_parameter_of_another_mode_is_refused_naming_its_mode(capsys):
    selective = [*TRAIN_BASE, "--partial_loss_mode", "selective"]
    err = parse_error(train.parse_args, [*selective, "--hill_lambda", "3"], capsys)
    assert "--hill_lambda" in err and "--partial_loss_mode hill" in err and "selective" in err, err
    # The default passed explicitly is still "given" (a value comparison could not tell).
    default = str(LOSS_HYPERPARAMETERS["hill_lambda"].default)
    err = parse_error(train.parse_args, [*selective, "--hill_lambda", default], capsys)
    assert "--hill_lambda" in err, err
    err = parse_error(train.parse_args, [*TRAIN_BASE, "--partial_loss_mode", "hill", "--clip", "0"], capsys)
    assert "--clip" in err and "selective" in err and "not of hill" in err, err
    # Given for its own mode (the four CSL modes share theirs): accepted, the others keep their defaults.
    args = train.parse_args([*TRAIN_BASE, "--partial_loss_mode", "hill", "--hill_lambda", "3"])
    assert args.hill_lambda == 3.0 and args.clip == LOSS_HYPERPARAMETERS["clip"].default
    args = train.parse_args([*TRAIN_BASE, "--partial_loss_mode", "ignore", "--likelihood_topk", "5"])
    assert args.likelihood_topk == 5 and args.clip == 0


def rewritten(source, target, *, compression, pad: int = 0) -> None:
    """``source``'s zip members written again, data.pkl followed by ``pad`` zero bytes."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", compression) as new:
        for member in old.infolist():
            data = old.read(member)
            padded = member.filename.endswith("data.pkl")
            new.writestr(member.filename, data + b"\0" * pad if padded else data)


def test_crafted_checkpoints_are_refused_before_unpickling(tmp_path):
    original = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.ones(3)}}, original)
    padded, compressed, legacy = tmp_path / "padded.pth", tmp_path / "compressed.pth", tmp_path / "legacy.pth"
    rewritten(original, padded, compression=zipfile.ZIP_DEFLATED, pad=64 << 20)
    assert padded.stat().st_size < 1 << 20  # 64 MiB of zeros cost the file almost nothing
    with pytest.raises(CheckpointError, match=r"--model-path: '.*padded.pth' .*data.pkl' claims \d+ bytes"):
        read_pth(padded, flag="--model-path")
    rewritten(original, compressed, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="compressed.pth.*is compressed, which torch.save never writes"):
        read_pth(compressed)
    stored = tmp_path / "stored.pth"  # the same members stored, as torch.save writes them: loads
    rewritten(original, stored, compression=zipfile.ZIP_STORED)
    assert torch.equal(read_pth(stored)["model"]["w"], torch.ones(3))
    torch.save({"model": {"w": torch.ones(3)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_pth(legacy)["model"]["w"], torch.ones(3))


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "pics" / "a.png"
    path.parent.mkdir()
    Image.new("RGB", (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), (200, 30, 30)).save(path)
    return path


def test_stored_image_size_is_bounded(tmp_path, picture):
    path = tmp_path / "big.pth"
    save_tiny_checkpoint(path, ["a", "b"])
    torch.save({**torch.load(path), "args": {"image_size": 30000}}, path)
    with pytest.raises(CheckpointError, match=r"big.pth' stores image_size 30000, .*\[1, 4096\]; pass "
                                              "--input_size"):
        infer.main(["--model_path", str(path), "--pic_path", str(picture), "--output_dir",
                    str(tmp_path / "out"), "--device", "cpu"])


def test_names_from_a_checkpoint_are_printed_escaped(tmp_path, picture, capsys):
    hostile = "cat\x1b]0;pwned\x07\x1b[2J"
    path = tmp_path / "names.pth"
    save_tiny_checkpoint(path, [hostile, "dog"])
    results = infer.main(["--model_path", str(path), "--pic_path", str(picture), "--input_size",
                          str(TINY_IMAGE_SIZE), "--output_dir", str(tmp_path / "out"), "--device", "cpu",
                          "--th", "0"])
    out = capsys.readouterr().out
    assert hostile in [name for name, _ in results[0]["tags"]]  # the name itself is kept (CSV, returns)
    assert "\x1b" not in out and "\x07" not in out
    assert "cat\\x1b]0;pwned\\x07\\x1b[2J (" in out


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_infer_applies_exif_orientation(tmp_path, suffix):
    # Stored 40 wide x 20 high, red left half; orientation 6 = the camera was turned: upright it is 20 x 40,
    # with the red half on top.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "pics" / f"phone.{suffix}"
    path.parent.mkdir()
    stored.save(path, exif=exif)
    checkpoint = tmp_path / "tiny.pth"
    save_tiny_checkpoint(checkpoint, ["a", "b"])
    result = infer.main(["--model_path", str(checkpoint), "--pic_path", str(path), "--input_size",
                         str(TINY_IMAGE_SIZE), "--output_dir", str(tmp_path / "out"), "--device", "cpu"])[0]
    drawn = Image.open(result["output"]).convert("RGB")
    scale = -(-infer.MIN_DISPLAY_SIZE // 20)  # infer enlarges the small side to 384 px
    assert drawn.width == 20 * scale
    top, bottom = drawn.getpixel((10 * scale, 5 * scale)), drawn.getpixel((10 * scale, 35 * scale))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60, (top, bottom)


def test_memory_error_is_reported_with_the_size_and_the_fix(tmp_path, picture, monkeypatch, capsys):
    def no_memory(argv):
        raise MemoryError()

    assert run_cli(no_memory, [], prog="x") == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "--input_size" in err and not err.rstrip().endswith("error:"), err

    checkpoint = tmp_path / "tiny.pth"
    save_tiny_checkpoint(checkpoint, ["a", "b"])
    monkeypatch.setattr(infer, "predict_tags", lambda *args, **kwargs: no_memory(None))
    assert infer.cli(["--model_path", str(checkpoint), "--pic_path", str(picture), "--input_size", "4000",
                      "--output_dir", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "out of memory tagging" in err and "--input_size 4000" in err and "smaller --input_size" in err
    assert not (tmp_path / "out").exists()



def test_the_parser_records_which_flags_were_given():
    parser = train.build_train_parser()
    parser.parse_args(["--lr", "2e-4", "--clip", "0.05", "--resume", "x.pth"])  # two defaults, given
    assert parser.given == {"lr", "clip", "resume"}


@pytest.mark.parametrize("mode, flag, refused", [("hill", "--hill_lambda", False),
                                                 ("negative", "--hill_lambda", True)])
def test_with_resume_a_loss_flag_must_belong_to_the_runs_own_mode(tmp_path, mode, flag, refused):
    """--resume RUN/last.pth --hill_lambda 1.5: checked against the run's mode (from its checkpoint), not
    against the command line's default mode."""
    parser = train.build_train_parser()
    args = parser.parse_args(["--resume", str(tmp_path / "last.pth"), flag, "1.5"])  # no parse-time error
    checkpoint = {"args": dict(vars(train.build_train_parser().parse_args([])), partial_loss_mode=mode)}
    if refused:
        with pytest.raises(train.ConfigError, match=r"--hill_lambda is a hyper-parameter of "
                                                    r"--partial_loss_mode hill, not of negative"):
            train.take_run_settings(args, parser.given, checkpoint)
    else:
        taken = train.take_run_settings(args, parser.given, checkpoint)
        assert (taken.partial_loss_mode, taken.hill_lambda, taken.path_dest) == ("hill", 1.5, str(tmp_path))
