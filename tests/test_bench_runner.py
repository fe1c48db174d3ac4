"""bench/run_all.py: rows travel from each benchmark's process to one markdown summary."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_all", os.path.join(ROOT, "bench", "run_all.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_table_has_every_column_once_and_formats_floats():
    runner = _load_runner()
    table = runner.markdown([{"case": "a", "ms": 1.23456}, {"case": "b", "speedup": 8}])
    lines = table.splitlines()
    assert lines[0] == "| case | ms | speedup |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| a | 1.235 |  |" and lines[3] == "| b |  | 8 |"
    assert runner.markdown([]) == "(no rows)"


def test_rows_come_back_from_a_benchmark_process(monkeypatch, capsys):
    runner = _load_runner()
    # A stand-in benchmark: any module whose call returns JSON-able rows (here: the json module itself).
    monkeypatch.setitem(runner.BENCHMARKS, "fake", ("json", "loads('[{\"case\": \"x\", \"ms\": 2.5}]')"))
    rows, seconds = runner.run_one("fake")
    assert rows == [{"case": "x", "ms": 2.5}] and seconds > 0
    runner.main(["fake"])
    out = capsys.readouterr().out
    assert "### bench_fake" in out and "| x | 2.5 |" in out


def test_unknown_benchmark_and_failing_benchmark_are_errors(monkeypatch):
    runner = _load_runner()
    with pytest.raises(SystemExit, match="unknown benchmark"):
        runner.main(["nope"])
    monkeypatch.setitem(runner.BENCHMARKS, "broken", ("json", "loads('not json')"))
    with pytest.raises(SystemExit, match="benchmark 'broken' failed"):
        runner.run_one("broken")
