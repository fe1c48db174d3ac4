"""Bad input and faults, as a careless user would meet them: one test per case, tiny data.

The cases of the issue "Nothing lost, nothing silently wrong", what is guaranteed now, and where tested:

 1. a new run overwrote a finished run / the default ./outputs was shared -> refused unless --resume
    (same run) or --overwrite; a fresh ./outputs/<time>_<mode> per run: test_path_dest_*, test_default_*,
    test_two_default_runs_*, test_overwrite_*, test_a_run_killed_before_*
 2. 16-bit PNG decoded as solid white -> scaled to 8 bits: tests/test_bad_inputs_data.py
 3. --resume with other data continued silently -> data identity checked: test_resume_with_*
 4. --partial_labels of another dataset accepted -> source and positives checked: test_bad_inputs_data.py
 5. infer.py printed tags from NaN weights -> refused: tests/test_infer.py
 6. divergence trained on and was saved -> non-finite loss/weights stop the run, growth warns:
    test_non_finite_*, test_a_loss_that_grows_*
 7. --simulate_partial_param help said "annotated fraction" -> test_rps_help_says_removal_probability
 8. --prior_threshold > 1, unused --prior_path -> test_prior_flags_that_cannot_work; weights of another
    architecture -> tests/test_bad_inputs_data.py
 9. --resume of a truncated/empty/foreign file -> one clear error: test_resume_of_an_unreadable_file_*,
    tests/test_checkpoint_io.py
10. missing/undecodable image -> checked at start-up: tests/test_bad_inputs_data.py
11. full disk, read-only or file --path_dest -> path and cause named: test_path_dest_that_is_a_file_*,
    test_unwritable_path_dest_*, tests/test_checkpoint_io.py
12. a crafted .pth ran code -> refused unless --unsafe_pickle: tests/test_checkpoint_io.py,
    tests/test_bad_inputs_data.py
13. *.pth.tmp.<pid> left by killed saves -> removed at the next save: tests/test_checkpoint_io.py
14. OpenImages conflicts, empty rows, default folder, open file -> tests/test_bad_inputs_data.py

The second attack (issue "Nothing lost under concurrency, interruption or hostile input"):

15. two processes writing one folder -> an OS lock per folder (train.py's run folder, reproduce.py's
    --out, prepare's --root): the second exits 2 naming the holder; --resume with --overwrite of the same
    folder refused before anything is touched; coco_simulation / src.prior --out never replace a file
    without --overwrite: tests/test_bad_inputs_writers.py
16. reproduce.py killed or stopped -> its cells run in their own process groups, get SIGTERM passed on
    (and die with it on kill -9); a rerun resumes the interrupted cell from its last.pth; a read-only
    --models_dir or a run that saved no epoch gets a hint that is true: tests/test_bad_inputs_writers.py
17. a fault during a run -> last.pth before each evaluation; a bad image mid-epoch saves and names the file
    (or is skipped and counted); the evaluation set decoded at start-up, --verify_images full; FIFOs never
    opened; Ctrl-C = SIGTERM (exit 130); SIGTERM in the prior pass says how to get the prior; a stopped
    DDP rank ends the job after --dist_timeout; a crafted last.pth is one line:
    tests/test_bad_inputs_interrupt.py
18. text inputs with a BOM, repeated or malformed COCO ids / names, a simulation that leaves no label or no
    positive, truncated data.csv or junk .part downloads, an unwritable prepare --root, a text file as
    --partial_labels -> refused or read right: tests/test_bad_inputs_inputs.py
19. flags checked at the parser (lr > 0 and finite, thresholds in [0, 1], alpha >= 0, seed >= 0, image
    sizes <= 4096); a later method's flag with another --partial_loss_mode refused; compressed or inflated
    checkpoint members and stored image sizes refused before use; control characters escaped; EXIF
    orientation applied by infer.py; no empty "error:": tests/test_bad_inputs_flags.py
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import pytest
import torch

import train
from src.data.embedded import generate_embedded_dataset
from src.engine import NonFiniteLossError
from src.utils.cli import ConfigError, run_cli
from src.utils.run_folder import fresh_run_folder
from tests.conftest import tiny_train_argv

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(folder) -> dict[str, float]:
    return {name: os.path.getmtime(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def finished_run(embedded_data_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("finished")
    train.main(tiny_train_argv(embedded_data_dir, dest))
    return str(dest)


# ------------------------------------------------------------------------------------------ 1: nothing lost
def test_path_dest_holding_a_run_is_refused_and_left_untouched(embedded_data_dir, finished_run):
    before = _files(finished_run)
    with pytest.raises(ConfigError, match=r"holds a finished run \(1 of 1 epochs.*--resume .*last.pth.*"
                                          r"--overwrite"):
        train.main(tiny_train_argv(embedded_data_dir, finished_run))
    assert _files(finished_run) == before


def test_a_run_killed_before_its_first_checkpoint_is_protected_too(embedded_data_dir, tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"epochs": 3}))
    with pytest.raises(ConfigError, match="a run that saved no epoch yet"):
        train.main(tiny_train_argv(embedded_data_dir, tmp_path))


def test_overwrite_replaces_the_old_run_without_mixing_it_in(embedded_data_dir, finished_run, tmp_path):
    dest = tmp_path / "copy"
    dest.mkdir()
    for name in ("args.json", "metrics.jsonl", "best.pth", "last.pth"):
        (dest / name).write_bytes(open(os.path.join(finished_run, name), "rb").read())
    (dest / "metrics.jsonl").write_text((dest / "metrics.jsonl").read_text() * 3)  # 3 old epoch lines
    train.main(tiny_train_argv(embedded_data_dir, dest, "--overwrite", "--seed", "1"))
    lines = (dest / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # not appended to the old lines
    assert json.loads((dest / "args.json").read_text())["seed"] == 1


def test_resume_into_the_runs_own_folder_is_allowed_and_into_another_run_refused(embedded_data_dir,
                                                                                 finished_run, tmp_path):
    last = os.path.join(finished_run, "last.pth")
    summary = train.main(tiny_train_argv(embedded_data_dir, finished_run, "--resume", last))
    assert len(summary["history"]) == 1  # finished: nothing more to train, nothing refused
    other = tmp_path / "other"
    train.main(tiny_train_argv(embedded_data_dir, other, "--seed", "3"))
    with pytest.raises(ConfigError, match="holds a finished run"):
        train.main(tiny_train_argv(embedded_data_dir, other, "--resume", last))


def test_default_path_dest_is_a_fresh_folder(tmp_path):
    first = fresh_run_folder(str(tmp_path), "ignore_fpc_10", now=0)
    os.makedirs(first)
    second = fresh_run_folder(str(tmp_path), "ignore_fpc_10", now=0)  # same second: a suffix
    assert re.fullmatch(r"\d{8}-\d{6}_ignore_fpc_10", os.path.basename(first))
    assert second == first + "-2"
    assert train.parse_args([]).path_dest is None  # unset: train.py asks for a fresh folder


@pytest.mark.slow
def test_two_default_runs_get_two_folders(embedded_data_dir, tmp_path):
    argv = [a for a in tiny_train_argv(embedded_data_dir, "unused") if a not in ("--path_dest", "unused")]
    with contextlib.chdir(tmp_path):  # the default parent is ./outputs
        for _ in range(2):
            train.main(argv)
    runs = sorted(os.listdir(tmp_path / "outputs"))
    assert len(runs) == 2 and all(r.endswith("_negative_fpc_10") or "_negative_fpc_10-" in r for r in runs)
    for run in runs:
        assert {"args.json", "last.pth", "metrics.jsonl"} <= set(os.listdir(tmp_path / "outputs" / run))


# ------------------------------------------------------------------------------------------ 3: resume data
def test_resume_with_other_data_is_refused(finished_run, embedded_data_dir, tmp_path):
    other_data = tmp_path / "other_data"
    generate_embedded_dataset(str(other_data), n_train=96, n_test=48, image_size=32, seed=5)
    with pytest.raises(ConfigError, match=r"other settings or data.*\n.*training labels: checkpoint"):
        train.main(tiny_train_argv(str(other_data), tmp_path / "out", "--resume",
                                   os.path.join(finished_run, "last.pth")))


def test_resume_with_the_classes_in_another_order_is_refused(finished_run, embedded_data_dir, tmp_path):
    checkpoint = torch.load(os.path.join(finished_run, "last.pth"), map_location="cpu", weights_only=True)
    names = checkpoint["data"]["class_names"]
    checkpoint["data"]["class_names"] = names[1:] + names[:1]  # as if trained on a reordered class list
    path = tmp_path / "reordered.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ConfigError, match="class names: the same classes in another order"):
        train.main(tiny_train_argv(embedded_data_dir, tmp_path / "out", "--resume", str(path)))


# ------------------------------------------------------------------------------------------ 6: divergence
def test_non_finite_loss_stops_at_once_and_saves_nothing(embedded_data_dir, tmp_path):
    dest = tmp_path / "diverged"
    with pytest.raises(NonFiniteLossError, match=r"loss nan at epoch 1, step 2/6 .*Lower --lr"):
        train.main(tiny_train_argv(embedded_data_dir, dest, "--lr", "1e30"))
    assert not (dest / "best.pth").exists() and not (dest / "last.pth").exists()


def test_a_loss_that_grows_warns_once_naming_the_learning_rate(embedded_data_dir, tmp_path, capsys):
    train.main(tiny_train_argv(embedded_data_dir, tmp_path / "grows", "--lr", "1e6"))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: the loss")]
    assert len(warnings) == 1 and "over 10x its first value" in warnings[0] and "lower --lr" in warnings[0]


def test_non_finite_weights_are_never_saved(embedded_data_dir, tmp_path, monkeypatch):
    import src.trainer

    original = src.trainer.Trainer.sync_ranks

    def poison_then_sync(self):  # as if an optimizer step had produced NaN weights without a NaN loss
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))
        original(self)

    monkeypatch.setattr(src.trainer.Trainer, "sync_ranks", poison_then_sync)
    dest = tmp_path / "nan_weights"
    with pytest.raises(NonFiniteLossError, match="regular weights hold NaN or inf after epoch 1"):
        train.main(tiny_train_argv(embedded_data_dir, dest))
    assert not (dest / "best.pth").exists() and not (dest / "last.pth").exists()


# ------------------------------------------------------------------------------------------ 7, 8: flags
def test_rps_help_says_removal_probability(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "probability of REMOVING each label" in text and "annotated fraction" not in text


def test_prior_flags_that_cannot_work(embedded_data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--prior_threshold", "1.5"])
    assert "must be a probability in [0, 1]" in capsys.readouterr().err
    prior = tmp_path / "prior.csv"
    prior.write_text("Classes,avg_pred\n" + "".join(f"c{i},0.1\n" for i in range(48)))
    with pytest.raises(ConfigError, match="--prior_path .* only used by --partial_loss_mode selective"):
        train.main(tiny_train_argv(embedded_data_dir, tmp_path / "out", "--partial_loss_mode", "ignore",
                                   "--prior_path", str(prior)))


# ------------------------------------------------------------------------------------------ 9, 11: files
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("content, message", [(b"", "is empty"),
                                              (b"\x80garbage", "not a readable torch file")])
def test_resume_of_an_unreadable_file_is_one_clear_error(embedded_data_dir, tmp_path, content, message,
                                                         capsys):
    """Through run_cli, the one place a command's errors become ``prog: error: ...`` and its exit status
    (tests/test_train.py runs the script itself once)."""
    path = tmp_path / "last.pth"
    path.write_bytes(content)
    argv = tiny_train_argv(embedded_data_dir, tmp_path / "o", "--resume", str(path))
    assert run_cli(train.main, argv, prog="train.py") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(f"train.py: error: --resume: .*last.pth.* {message}", err)


def test_path_dest_that_is_a_file_is_named_before_any_work(embedded_data_dir, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="--path_dest: .*a_file.* is a file"):
        train.main(tiny_train_argv(embedded_data_dir, target / "run"))
    assert target.read_text() == "x"


def test_unwritable_path_dest_is_named_before_any_work(embedded_data_dir, tmp_path, monkeypatch):
    import src.utils.run_folder

    monkeypatch.setattr(src.utils.run_folder.os, "access", lambda path, mode: False)  # root ignores modes
    with pytest.raises(ConfigError, match="--path_dest: .* is not writable"):
        train.main(tiny_train_argv(embedded_data_dir, tmp_path / "ro" / "run"))
    assert not (tmp_path / "ro").exists()
