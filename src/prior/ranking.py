"""How well a prior estimate ranks the classes against the true frequencies (``#positives / N`` of the full
labels): Spearman's rho and the top-10 list (the paper's "Estimating the Class Distribution"), beside the
naive counts ``pos / N`` (the paper's baseline) and ``pos / annotated`` (biased when annotation favours
positives).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values`` (ascending); tied values share the mean of the ranks they span."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(x).any():
        raise ValueError("average_ranks: values contain NaN; a prior or frequency vector must be finite")
    _, group, size = np.unique(x, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(size)  # a group of n ranks last_rank-n+1 .. last_rank has mean last_rank-(n-1)/2
    return (last_rank - (size - 1) / 2.0)[group.ravel()]


def spearman(a, b) -> float:
    """Spearman's rho with average ranks for ties; NaN when either vector is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman: need two vectors of equal length >= 2, got {a.size} and {b.size}")
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def top_classes(values, class_names: Sequence[str], top: int = 10) -> list[str]:
    """Names of the ``top`` largest values; ties keep class order (stable sort)."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="mergesort")[:top]
    return [class_names[i] for i in order]


def naive_estimates(labels) -> dict[str, np.ndarray]:
    """The two count-based estimates from a LabelMatrix of partial labels."""
    positives = labels.positive_counts().astype(np.float64)
    annotated = labels.annotated_counts().astype(np.float64)
    per_annotated = np.divide(positives, annotated, out=np.zeros_like(positives), where=annotated > 0)
    return {"naive (pos / N)": positives / max(labels.num_samples, 1),
            "naive (pos / annotated)": per_annotated}


def rank_statistics(true_freq, estimates: Mapping[str, np.ndarray], class_names: Sequence[str],
                    top: int = 10) -> dict[str, dict]:
    """Per estimate (the true frequency first): Spearman rho, its top list and its overlap with the true's."""
    true_freq = np.asarray(true_freq, dtype=np.float64)
    if true_freq.shape != (len(class_names),):
        raise ValueError(f"rank_statistics: true_freq has shape {true_freq.shape}, expected "
                         f"({len(class_names)},) - one value per class")
    true_top = top_classes(true_freq, class_names, top)
    stats = {}
    for name, values in {"true frequency": true_freq, **estimates}.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != true_freq.shape:
            raise ValueError(f"rank_statistics: estimate '{name}' has {values.size} values but there are "
                             f"{true_freq.size} classes; it was computed for a different class list")
        names = top_classes(values, class_names, top)
        stats[name] = {"spearman": spearman(true_freq, values), "top": names,
                       "top_overlap": len(set(names) & set(true_top))}
    return stats


def rank_report(true_freq, estimates: Mapping[str, np.ndarray], class_names: Sequence[str],
                top: int = 10, statistics: Mapping[str, dict] | None = None) -> str:
    """Markdown table of `rank_statistics`: the top-k classes of each estimate, Spearman rho, overlap."""
    stats = rank_statistics(true_freq, estimates, class_names, top) if statistics is None else statistics
    all_values = {"true frequency": np.asarray(true_freq, dtype=np.float64), **estimates}
    index = {name: i for i, name in enumerate(class_names)}
    columns = list(stats)
    k = min(top, len(class_names))
    lines = ["| rank | " + " | ".join(columns) + " |", "|---:|" + "---|" * len(columns)]
    for r in range(k):
        cells = []
        for col in columns:
            cls = stats[col]["top"][r]
            cells.append(f"{cls} ({float(np.asarray(all_values[col])[index[cls]]):.3f})")
        lines.append(f"| {r + 1} | " + " | ".join(cells) + " |")
    rhos = " | ".join(f"{stats[c]['spearman']:.3f}" for c in columns)
    lines.append(f"| Spearman rho vs true | {rhos} |")
    lines.append(f"| top-{k} overlap with true | "
                 + " | ".join(f"{stats[c]['top_overlap']}/{k}" for c in columns) + " |")
    return "\n".join(lines)
