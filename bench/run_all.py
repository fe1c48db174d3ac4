"""Run every benchmark and print one summary (the README's performance tables are this output).

    python bench/run_all.py            # or: make bench
    python bench/run_all.py loss map   # a subset

Each benchmark runs in its own process (the mAP benchmark peaks at ~8.5 GB; the model benchmark
measures peak memory per configuration), prints its own detailed table, and hands its rows back as
JSON; the summary below repeats them as markdown tables. Numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARKER = "@@BENCH_ROWS@@"

# name -> (module, call expression returning the rows)
BENCHMARKS = {
    "loss": ("bench.bench_loss", "main()"),
    "map": ("bench.bench_map", "main([])"),
    "data": ("bench.bench_data", "main()"),
    "model": ("bench.bench_model", "main([])"),
}


def run_one(name: str) -> tuple[list[dict], float]:
    module, call = BENCHMARKS[name]
    code = (f"import json, {module} as bench; rows = bench.{call}; "
            f"print({MARKER!r} + json.dumps(rows, default=str))")
    start = time.time()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - start
    sys.stdout.write(done.stdout.replace(MARKER, "rows: ", 1) if done.returncode else
                     "".join(line + "\n" for line in done.stdout.splitlines() if not line.startswith(MARKER)))
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"benchmark '{name}' failed (exit {done.returncode})")
    payload = next(line for line in done.stdout.splitlines() if line.startswith(MARKER))
    return json.loads(payload[len(MARKER):]), seconds


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)")
    names = parser.parse_args(argv).names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    summary = []
    for name in names:
        print(f"\n===== bench_{name} =====", flush=True)
        rows, seconds = run_one(name)
        summary.append(f"### bench_{name} ({seconds:.0f} s)\n\n{markdown(rows)}")
    print("\n===== summary =====\n")
    print(f"machine: {os.cpu_count()} CPU cores, python {sys.version.split()[0]}\n")
    print("\n\n".join(summary))


if __name__ == "__main__":
    main()
