"""The regime sweep (``reproduce.py --sweep``): when does CSL's selection help? Each point moves the embedded
protocol along one regime variable (model strength, label budget, class design) around the demo of its day
(shape_colour, 6,000 x 10; docs/regime.md); per point and column the summary gives the regime and CSL's
margin over the best baseline. The points were fixed before any ran; nothing is tuned on CSL.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass

from src.reproduce.protocols import Protocol, embedded_fpc_param, embedded_protocol
from src.reproduce.report import BASELINE_ROWS, column_title, csv_text, regime, table_rows, write_reports
from src.reproduce.runner import run_table
from src.utils.io import atomic_write_json, atomic_write_text, save_figure

SWEEP_ROWS = ("full_labels", "ignore_ce", "negative_ce", "negative_asl", "csl")


@dataclass(frozen=True)
class SweepPoint:
    name: str
    axis: str  # the regime variable this point moves: strength, budget or design
    n_train: int
    epochs: int
    n_test: int = 3000
    design: str = "shape_colour"  # the points' own, whatever the generator's default becomes
    fpc_scale: float = 1.0  # FPC n as a multiple of COCO's share of the training set


SWEEP_POINTS = (
    SweepPoint("s1_6k_10ep", "strength", 6000, 10),
    SweepPoint("s2_6k_30ep", "strength", 6000, 30),
    SweepPoint("s3_20k_10ep", "strength", 20000, 10),
    SweepPoint("s4_82k_4ep", "strength", 82081, 4, n_test=10000),
    SweepPoint("s2_budget_x8", "budget", 6000, 30, fpc_scale=8.0),
    SweepPoint("s1_glyphs", "design", 6000, 10, design="glyphs"),
    SweepPoint("s2_glyphs", "design", 6000, 30, design="glyphs"),
)


def point_protocol(args: argparse.Namespace, point: SweepPoint, extra_flags: dict) -> tuple:
    """(namespace, embedded protocol) of the point: its own data folder, FPC n scaled, the sweep's rows."""
    data_root = os.path.join(args.data_root, "sweep", f"{point.design}_n{point.n_train}_t{point.n_test}")
    point_args = argparse.Namespace(**{**vars(args), "n_train": point.n_train, "n_test": point.n_test,
                                       "epochs": point.epochs, "design": point.design, "data_root": data_root,
                                       "out": os.path.join(args.out, "sweep", point.name)})
    protocol = embedded_protocol(point_args, extra_flags)
    protocol.columns["fpc"] = embedded_fpc_param(point.n_train, point.fpc_scale)
    protocol.rows = SWEEP_ROWS
    return point_args, protocol


def summarise_point(point: SweepPoint, protocol: Protocol, rows: list[dict]) -> list[dict]:
    lines = []
    for scheme, param in protocol.columns.items():
        by_row = {r["row"]: r for r in rows if r["scheme"] == scheme}
        numbers = regime(rows, scheme) or {}
        baselines = {key: by_row[key]["best_mAP"] for key in BASELINE_ROWS if key in by_row}
        best_key = max(baselines, key=baselines.get) if baselines else None
        csl = by_row.get("csl", {}).get("best_mAP")
        margin = csl - baselines[best_key] if csl is not None and best_key else None
        lines.append({**asdict(point), "scheme": scheme, "param": param, **numbers,
                      "best_baseline": best_key, "best_baseline_mAP": baselines.get(best_key),
                      "csl_mAP": csl, "csl_margin": margin})
    return lines


def sweep_markdown(lines: list[dict]) -> str:
    def number(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    out = ["| point | axis | images x epochs | design | column | ceiling | Ignore/ceiling | Negative/ceiling "
           "| best baseline | CSL | CSL - best baseline |",
           "|---|---|---|---|---|---:|---:|---:|---|---:|---:|"]
    for line in lines:
        column = column_title(line["scheme"], line["param"])
        baseline = "-" if not line["best_baseline"] else \
            f"{line['best_baseline']} {number(line['best_baseline_mAP'])}"
        out.append(f"| {line['name']} | {line['axis']} | {line['n_train']} x {line['epochs']} "
                   f"| {line['design']} | {column} | {number(line.get('ceiling'), 1)} "
                   f"| {number(line.get('ignore_ce'))} "
                   f"| {number(line.get('negative_ce'))} | {baseline} | {number(line['csl_mAP'])} "
                   f"| {number(line['csl_margin'])} |")
    return "\n".join(out)


def sweep_plot(lines: list[dict], path: str) -> None:
    """CSL's margin over the best baseline against the ceiling and Ignore/ceiling."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    for ax, key, label in zip(fig.subplots(1, 2), ("ceiling", "ignore_ce"),
                              ("full-label ceiling (mAP)", "Ignore / ceiling")):
        for scheme, marker in (("fpc", "o"), ("rps", "s")):
            points = [(line[key], line["csl_margin"], line["name"]) for line in lines
                      if line["scheme"] == scheme and line.get(key) is not None
                      and line["csl_margin"] is not None]
            if points:
                ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker,
                           label=scheme.upper())
                for x, y, name in points:
                    ax.annotate(name, (x, y), fontsize=6)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("CSL - best baseline (mAP)")
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def run_sweep(args: argparse.Namespace, extra_flags: dict, seeds: int, jobs: int, env: dict,
              points=SWEEP_POINTS) -> str:
    """Run every point (finished cells are reused) and write ``<out>/sweep.{md,json,csv,png}``."""
    lines = []
    for point in points:
        point_args, protocol = point_protocol(args, point, extra_flags)
        print(f"sweep point {point.name} ({point.axis}): {point.n_train} images x {point.epochs} epochs, "
              f"{point.design}, FPC({protocol.columns['fpc']})", flush=True)
        results = run_table(point_args, protocol, seeds, jobs, env)
        write_reports(point_args.out, protocol, results, seeds)
        lines += summarise_point(point, protocol, table_rows(results, protocol))
    text = sweep_markdown(lines)
    atomic_write_text(os.path.join(args.out, "sweep.md"), text + "\n")
    atomic_write_json(os.path.join(args.out, "sweep.json"), lines)
    atomic_write_text(os.path.join(args.out, "sweep.csv"), csv_text(lines), newline="")
    sweep_plot(lines, os.path.join(args.out, "sweep.png"))
    return text
