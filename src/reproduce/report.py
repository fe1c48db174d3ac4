"""The table's reports: mean ± std per row and column, ``results.{json,csv,md,png}``, and the paper's
"Estimating the Class Distribution" table of the priors the stage-1 runs wrote."""

from __future__ import annotations

import csv
import io
import math
import os
import shlex

import numpy as np

from src.data.labels import LabelMatrix
from src.data.partial_labels import read_partial_label_file
from src.prior import naive_estimates, rank_report, read_prior_csv
from src.reproduce.mechanism import composition_table
from src.reproduce.protocols import (
    COCO_COLUMNS,
    COCO_FLAGS,
    COCO_REGIME,
    GIVEN_SCHEME,
    ONE_CHANGE_FROM,
    PAPER_RESULTS,
    README_PRIOR_THRESHOLD,
    REGIME_ROWS,
    Protocol,
    flags_to_argv,
    labels_complete,
    protocol_rows,
    scaled_schedule,
    training_labels,
)
from src.utils.io import atomic_write_json, atomic_write_text, save_figure


def mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


BASELINE_ROWS = ("ignore_ce", "negative_ce", "negative_asl")  # "the best baseline" is the best of these
# Student's t, two-sided 95% (the 0.975 quantile), for 1..30 degrees of freedom.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The table above; beyond 30 degrees of freedom the Cornish-Fisher expansion around z (error < 1e-4)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired_difference(a_by_seed: dict, b_by_seed: dict) -> tuple:
    """a - b over the seeds both have: (mean, low, high, seeds agreeing with the mean's sign, seeds), with a
    Student-t 95% interval (low = high = nan with one seed)."""
    diffs = np.asarray([a_by_seed[s] - b_by_seed[s] for s in sorted(set(a_by_seed) & set(b_by_seed))])
    if not len(diffs):
        raise ValueError("paired_difference: the two rows share no seed")
    mean = float(diffs.mean())
    half = t_quantile_975(len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)) if len(diffs) > 1 \
        else math.nan
    return mean, mean - half, mean + half, int((np.sign(diffs) == np.sign(mean)).sum()), len(diffs)


def verdict(low: float, high: float) -> str:
    """The wording rule: 'beats' / 'below' only where the 95% interval excludes 0, else 'tied'."""
    if math.isnan(low):
        return "one seed: no interval"
    return "beats" if low > 0 else "below" if high < 0 else "tied"


def paired_table(results: list[dict], protocol: Protocol) -> str:
    """Each row against the best baseline, against Negative and against the row it differs from in one
    component (`ONE_CHANGE_FROM`), per column, paired by seed."""
    lines = ["| row | column | against | difference | 95% interval | seeds agreeing | verdict |",
             "|---|---|---|---:|---|---:|---|"]
    for scheme, param in protocol.columns.items():
        by_row = {}
        for r in results:
            if r["scheme"] == scheme:
                by_row.setdefault(r["row"], {})[r["seed"]] = r["best_mAP"]
        baselines = [key for key in BASELINE_ROWS if key in by_row]
        if not baselines:
            continue
        best = max(baselines, key=lambda key: np.mean(list(by_row[key].values())))
        for row in protocol_rows(protocol):
            for other in dict.fromkeys((best, "negative_ce", ONE_CHANGE_FROM.get(row.key))):
                if other is None or row.key == other or row.key not in by_row or other not in by_row:
                    continue
                mean, low, high, agree, n = paired_difference(by_row[row.key], by_row[other])
                interval = "-" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]"
                against = f"{other} (best baseline)" if other == best else other
                lines.append(f"| {row.label} | {column_title(scheme, param)} | {against} | {mean:+.2f} "
                             f"| {interval} | {agree}/{n} | {verdict(low, high)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def table_rows(results: list[dict], protocol: Protocol) -> list[dict]:
    """Mean ± std per row and column; ``share``: best mAP / the full-label ceiling's (None without one).
    The full-label row has one run per seed, shown in every column."""
    ceiling_cells = [r["best_mAP"] for r in results if r["row"] == "full_labels"]
    ceiling = mean_std(ceiling_cells)[0] if ceiling_cells else None
    paper = {} if protocol.name == "csv" else PAPER_RESULTS  # the paper's COCO numbers beside COCO's columns
    rows = []
    for row in protocol_rows(protocol):
        for scheme, param in protocol.columns.items():
            cells = [r for r in results if r["row"] == row.key and (r["scheme"] == scheme or row.full_labels)]
            if not cells:
                continue
            best, best_std = mean_std([c["best_mAP"] for c in cells])
            final, final_std = mean_std([c["final_mAP"] for c in cells])
            rows.append({"row": row.key, "label": row.label, "scheme": scheme, "param": param,
                         "seeds": len(cells), "best_mAP": best, "best_mAP_std": best_std,
                         "final_mAP": final, "final_mAP_std": final_std,
                         "share": best / ceiling if ceiling else None,
                         "paper_mAP": paper.get((scheme, row.key))})
    return rows


def regime(rows: list[dict], scheme: str = "fpc") -> dict | None:
    by_row = {r["row"]: r for r in rows if r["scheme"] == scheme}
    if "full_labels" not in by_row or not all(key in by_row for key in REGIME_ROWS):
        return None
    shares = {key: by_row[key]["share"] for key in REGIME_ROWS}
    return {"ceiling": by_row["full_labels"]["best_mAP"], **shares}


def describe_regime(numbers: dict | None, scheme: str = "fpc") -> str:
    if numbers is None:
        return ""
    return (f"Regime ({scheme.upper()}): ceiling {numbers['ceiling']:.1f}, Ignore/ceiling "
            f"{numbers['ignore_ce']:.2f}, Negative/ceiling {numbers['negative_ce']:.2f} - COCO (TResNet-M "
            f"448 px): about {COCO_REGIME['ceiling']:.0f} (our estimate, the paper gives none), "
            f"{COCO_REGIME['ignore_ce']:.2f}, {COCO_REGIME['negative_ce']:.2f}")


def column_title(scheme: str, param) -> str:
    if scheme == GIVEN_SCHEME:
        return "as annotated"
    return f"FPC({int(param)})" if scheme == "fpc" else f"RPS({param:g})"


def markdown_table(rows: list[dict], protocol: Protocol) -> str:
    schemes = list(protocol.columns)
    head = "| Method | " + " | ".join(
        f"{column_title(s, protocol.columns[s])} best | share | final | paper (COCO)" for s in schemes) + " |"
    lines = [head, "|---|" + "---:|---:|---:|---:|" * len(schemes)]
    by_cell = {(r["row"], r["scheme"]): r for r in rows}
    for row in protocol_rows(protocol):
        cells = []
        for scheme in schemes:
            r = by_cell.get((row.key, scheme))
            if r is None:
                cells += ["-", "-", "-", "-"]
                continue
            paper = f"{r['paper_mAP']:.2f}" if r["paper_mAP"] is not None else "-"
            share = f"{r['share']:.2f}" if r["share"] is not None else "-"
            cells += [f"{r['best_mAP']:.2f} ± {r['best_mAP_std']:.2f}", share,
                      f"{r['final_mAP']:.2f} ± {r['final_mAP_std']:.2f}", paper]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_plot(rows: list[dict], protocol: Protocol, path: str) -> None:
    """The best mAP per row and column (matplotlib's object API: no global backend)."""
    from matplotlib.figure import Figure

    schemes = list(protocol.columns)
    fig = Figure(figsize=(5 * len(schemes), 4))
    table = protocol_rows(protocol)  # in the table's order
    for ax, scheme in zip(fig.subplots(1, len(schemes), squeeze=False)[0], schemes):
        found = [(row.label, r) for row in table for r in rows
                 if r["row"] == row.key and r["scheme"] == scheme]
        means = [r["best_mAP"] for _, r in found]
        ax.bar(range(len(found)), means, yerr=[r["best_mAP_std"] for _, r in found], capsize=4,
               color="#4c72b0")
        ax.set_xticks(range(len(found)), [label for label, _ in found], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{protocol.name}: {column_title(scheme, protocol.columns[scheme])}")
        ax.set_ylabel("mAP (best epoch, mean ± std over seeds)")
        if means:
            ax.set_ylim(max(0.0, min(means) - 10), min(100.0, max(means) + 5))
    fig.tight_layout()
    save_figure(fig, path)


def csv_text(lines: list[dict]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(lines[0]))
    writer.writeheader()
    writer.writerows(lines)
    return buffer.getvalue()


def prior_tables(results: list[dict], protocol: Protocol) -> str:
    """The paper's 'Estimating the Class Distribution' table, per column, for the first seed (against the
    true class frequencies: none for a CSV with un-annotated training labels)."""
    if not labels_complete(protocol):
        return ""
    full_labels, _, class_names = training_labels(protocol)
    true_freq = (full_labels == 1).mean(axis=0)
    sections = []
    seed = min((r["seed"] for r in results), default=0)  # the first seed's tables
    for scheme in protocol.columns:
        by_row = {r["row"]: r for r in results if r["scheme"] == scheme and r["seed"] == seed}
        if "ignore_ce" not in by_row or "negative_ce" not in by_row:
            continue
        labels_file = by_row["ignore_ce"]["partial_labels"]  # None: the CSV's own (here complete) labels
        partial = read_partial_label_file(labels_file).labels if labels_file else full_labels
        estimates = {f"{mode}-mode model": read_prior_csv(by_row[row]["prior_path"], class_names).numpy()
                     for mode, row in (("Ignore", "ignore_ce"), ("Negative", "negative_ce"))}
        estimates.update(naive_estimates(LabelMatrix.from_dense(partial)))
        title = column_title(scheme, protocol.columns[scheme])
        table = rank_report(true_freq, estimates, class_names)
        sections.append(f"#### {title}, seed {seed}\n\n{table}")
    return "\n\n".join(sections)


def full_scale_commands(protocol: Protocol) -> str:
    """Markdown: the reproduce.py call on COCO 2014 for the same rows, and each row's own train.py flags."""
    rows = [row for row in protocol_rows(protocol) if "coco" in row.protocols]
    lines = ["### At full scale (COCO 2014, the paper's protocol)", "",
             "```bash",
             "python reproduce.py --data /path/to/COCO_2014 --model-path timm:tresnet_m.miil_in21k \\",
             f"    --rows {','.join(row.key for row in rows)} --seeds 3 --device cuda "
             "[--nproc_per_node 8]", "```", "",
             "runs, per seed and column, `python -m coco_simulation` (the partial labels) and one `train.py` "
             f"per row with the COCO protocol (`{shlex.join(flags_to_argv(COCO_FLAGS))}`) plus the row's "
             "flags:", "",
             "| row | column | the row's train.py flags |", "|---|---|---|"]
    for row in rows:
        for scheme, param in COCO_COLUMNS.items():
            if scheme not in protocol.columns and not row.full_labels:
                continue
            flags = {**row.flags, **row.column_flags.get(scheme, {})}
            if row.scaled:
                flags.update(scaled_schedule(flags["partial_loss_mode"], COCO_FLAGS["epochs"]))
            if row.needs_prior:
                flags.update(prior_path="<the prior CSV in the Ignore run's priors/>",
                             prior_threshold=row.prior_threshold or README_PRIOR_THRESHOLD)
            labels = "all labels" if row.full_labels else f"{scheme.upper()}({param:g})"
            argv = " ".join(f"--{name} {value}" for name, value in flags.items())
            lines.append(f"| {row.label} | {labels} | `{argv}` |")
            if row.full_labels:
                break
    return "\n".join(lines)


def write_reports(out: str, protocol: Protocol, results: list[dict], seeds: int) -> str:
    """Write ``<out>/results.{json,csv,md,png}``; returns the markdown report."""
    rows = table_rows(results, protocol)
    regimes = {scheme: regime(rows, scheme) for scheme in protocol.columns}
    atomic_write_json(os.path.join(out, "results.json"),
                      {"protocol": protocol.__dict__, "table": rows, "cells": results, "regime": regimes})
    atomic_write_text(os.path.join(out, "results.csv"), csv_text(rows), newline="")
    text = [f"### {protocol.name}: mAP (%), mean ± std over {seeds} seed(s)", "",
            "best = best epoch on the evaluation set, max of regular/EMA (the paper's protocol); "
            "final = last epoch (no selection); share = best / the full-label ceiling.", "",
            markdown_table(rows, protocol), "",
            *[line for line in (describe_regime(regimes[s], s) for s in protocol.columns) if line], "",
            f"CSL prior threshold ({protocol.prior_threshold}): "
            f"{sorted({round(r['prior_threshold'], 4) for r in results if r['row'] == 'csl'})}"]
    paired = paired_table(results, protocol)
    if paired:
        text += ["", "### Paired differences (by seed: the rows of a seed share its partial labels)", "",
                 "best mAP, row - other; 'beats' / 'below' only where the 95% interval (Student t over the "
                 "seeds) excludes 0, else 'tied'.", "", paired]
    composition = composition_table(results, list(protocol.columns))
    if composition:
        text += ["", "### What the likelihood top-k ignored in the last epoch (share of the ignored entries)",
                 "", composition]
    priors = prior_tables(results, protocol)
    if priors:
        text += ["", "### Estimating the class distribution", "", priors]
    if protocol.name == "embedded":
        text += ["", full_scale_commands(protocol)]
    report = "\n".join(text) + "\n"
    atomic_write_text(os.path.join(out, "results.md"), report)
    bar_plot(rows, protocol, os.path.join(out, "results.png"))
    return report
