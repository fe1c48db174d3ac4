"""Positive labels per class before and after the simulation (matplotlib's object API: headless, no global
backend switch)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from src.utils.io import save_figure


def plot_class_frequencies(original_positive, simulated_positive, path, class_names: Sequence | None = None,
                           title: str = "Positive labels per class") -> str:
    """Save a PNG of per-class positive counts, classes sorted by original count."""
    from matplotlib.figure import Figure

    original = np.asarray(original_positive, dtype=np.float64)
    simulated = np.asarray(simulated_positive, dtype=np.float64)
    if original.shape != simulated.shape or original.ndim != 1:
        raise ValueError(f"plot_class_frequencies: original {original.shape} and simulated {simulated.shape} "
                         "counts must be 1-D arrays of the same length (one entry per class)")
    order = np.argsort(-original, kind="stable")
    ranks = np.arange(1, original.size + 1)
    figure = Figure(figsize=(8, 4.5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(ranks, original[order], label="original", marker=".", linewidth=1)
    axes.plot(ranks, simulated[order], label="simulated", marker=".", linewidth=1)
    axes.set_yscale("symlog", linthresh=1.0)  # log-like for the long tail, but 0 stays plottable
    if class_names is not None and len(class_names) <= 60:
        axes.set_xticks(ranks)
        axes.set_xticklabels([str(class_names[c]) for c in order], rotation=90, fontsize=6)
    else:
        axes.set_xlabel("class (sorted by original positive count)")
    axes.set_ylabel("positive labels")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    return save_figure(figure, os.fspath(path), dpi=100)
