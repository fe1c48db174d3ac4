"""Every command's --help: grouped in the agreed order (common flags before the specialised ones), one short
help per flag, no "(default: None)"; every bench script answers --help."""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import re
import runpy
import sys
import time
from unittest import mock

import pytest

import coco_simulation.__main__ as simulate
import infer
import reproduce
import src.data.embedded
import src.data.prepare
import src.prior_command
import train
import validate
from src.args import loss_flag_groups
from src.loss_functions import LOSS_MODES, PEER_MODES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"train.py": train.main, "validate.py": validate.main, "infer.py": infer.main,
            "python -m src.prior": src.prior_command.main, "reproduce.py": reproduce.main,
            "python -m coco_simulation": simulate.main, "python -m src.data.prepare": src.data.prepare.main,
            "python -m src.data.embedded": src.data.embedded.main}
ORDER = ["data", "model", "optimisation", "partial labels", "CSL",
         *(title for title in loss_flag_groups() if title not in ("partial labels", "CSL")), "output"]
MAX_HELP_CHARS = 200  # about three wrapped lines


def show_help(main, monkeypatch, capsys) -> tuple[str, argparse.ArgumentParser]:
    """The --help text a command prints, and the parser that printed it."""
    printed = []
    original = argparse.ArgumentParser.print_help

    def record(parser, file=None):
        printed.append(parser)
        original(parser, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    monkeypatch.setenv("COLUMNS", "110")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out, printed[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_grouped_short_and_names_no_none_default(command, monkeypatch, capsys):
    text, parser = show_help(COMMANDS[command], monkeypatch, capsys)
    assert "default: None" not in text and "default: False" not in text
    titles = [group.title for group in parser._action_groups if group._group_actions]
    known = [title for title in titles if title in ORDER]
    assert known == sorted(known, key=ORDER.index), titles
    # Only --help sits outside a named group.
    assert [a.dest for g in parser._action_groups if g.title in ("options", "optional arguments")
            for a in g._group_actions] == ["help"]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            assert len(formatter._expand_help(action)) <= MAX_HELP_CHARS, action.option_strings
    if "optimisation" in titles:  # the common flags come before the later methods' ~40
        lines = text.splitlines()

        def line_of(flag: str) -> int:
            return next(i for i, line in enumerate(lines) if re.match(rf"  (-\S+ .*)?{flag}[ ,]", line))

        later = [f"--{name}" for mode in PEER_MODES for name in LOSS_MODES[mode].hyperparameters]
        first_later = min((line_of(flag) for flag in later if f"{flag} " in text), default=len(lines))
        assert max(map(line_of, ("--data", "--lr", "--epochs", "--batch-size", "--model-name"))) < first_later
        assert command == "reproduce.py" or first_later < len(lines)


def test_train_flags_sit_in_their_method_group(monkeypatch, capsys):
    text, parser = show_help(train.main, monkeypatch, capsys)
    group_of_flag = {action.dest: group.title for group in parser._action_groups
                     for action in group._group_actions}
    for mode in PEER_MODES:  # one group per paper: AN-LS/EPR, Hill/SPLC, LL, EM/EM-APL, GR
        label = LOSS_MODES[mode].label.split(" (")[0]
        for name in LOSS_MODES[mode].hyperparameters:
            assert label in group_of_flag[name].split(" (")[0].split("/"), (mode, name, group_of_flag[name])
    assert [title for title in ORDER if f"\n{title}:\n" in text] == ORDER
    assert {"AN-LS/EPR", "Hill/SPLC", "LL-R/LL-Ct/LL-Cp", "EM/EM-APL", "GR-Loss"} == {
        title.split(" (")[0] for title in ORDER[5:-1]}
    for name in LOSS_MODES["selective"].hyperparameters:
        assert group_of_flag[name] == "CSL"
    assert group_of_flag["partial_loss_mode"] == "partial labels"
    help_text = next(a.help for a in parser._actions if a.dest == "partial_loss_mode")
    assert "docs/peer_methods.md" in help_text and "Zhou" not in help_text  # citations live in docs/
    # Every flag keeps its default.
    assert train.parse_args([]).lr == 2e-4 and train.parse_args([]).epochs == 30


def test_defaults_are_shown_unless_none_or_off(monkeypatch, capsys):
    text, _ = show_help(reproduce.main, monkeypatch, capsys)
    assert "--n_test N_TEST       embedded: test images (default: 3000)" in text
    assert "(default: auto)" in text  # --device, the one train.py flag reproduce.py keeps set
    text, _ = show_help(simulate.main, monkeypatch, capsys)
    assert "(default: 0)" in " ".join(text.split())  # --seed: a zero default is still shown


@pytest.mark.slow
def test_every_bench_script_answers_help_quickly():
    """Run as scripts (``__main__``) in this process: what ``python bench/X.py --help`` does, without paying
    a fresh interpreter's torch import per script."""
    for script in sorted(glob.glob(os.path.join(ROOT, "bench", "*.py"))):
        start, out = time.monotonic(), io.StringIO()
        with mock.patch.object(sys, "argv", [script, "--help"]), contextlib.redirect_stdout(out), \
                pytest.raises(SystemExit) as done:
            runpy.run_path(script, run_name="__main__")
        assert done.value.code in (0, None) and "usage:" in out.getvalue(), script
        assert time.monotonic() - start < 10, script
