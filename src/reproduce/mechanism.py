"""What CSL's likelihood top-k ignored in a run's last epoch (``train.py --record_ignored``), classified
against the full labels: ``true_positive`` (class c is in image i), a negative sharing the colour or the
shape (``shares_colour``/``shares_shape``, both can count) of an object in the image, or ``other``.
Attributes: `src.data.embedded.class_attributes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COMPOSITION_KEYS = ("true_positive", "shares_colour", "shares_shape", "other")


def ignored_composition(image_ids: Sequence, classes: Sequence[int], full_labels: np.ndarray,
                        full_image_ids: Sequence, attributes: Sequence[tuple[str, str]]) -> dict:
    """Counts and shares of the ignored entries ``(image_ids[k], classes[k])``; ``full_labels``: dense
    (N, C) of ``full_image_ids``; ``attributes``: (shape, colour) per class."""
    row_of = {str(image_id): row for row, image_id in enumerate(full_image_ids)}
    missing = [i for i in image_ids if str(i) not in row_of]
    if missing:
        raise ValueError(f"ignored_composition: {len(missing)} ignored entries name images that are not "
                         f"in the full labels (first: {missing[0]!r}); pass the labels of the run's "
                         "training set")
    rows = np.asarray([row_of[str(i)] for i in image_ids], dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    shapes = np.asarray([a[0] for a in attributes])
    colours = np.asarray([a[1] for a in attributes])
    present = full_labels[rows] == 1  # (entries, C): the classes in each entry's image
    positive = present[np.arange(len(rows)), classes]
    same_shape = (present & (shapes[None, :] == shapes[classes][:, None])).any(axis=1) & ~positive
    same_colour = (present & (colours[None, :] == colours[classes][:, None])).any(axis=1) & ~positive
    counts = {"true_positive": int(positive.sum()), "shares_colour": int(same_colour.sum()),
              "shares_shape": int(same_shape.sum()),
              "other": int((~positive & ~same_shape & ~same_colour).sum())}
    total = len(rows)
    return {"entries": total, **counts,
            **{f"{key}_share": (counts[key] / total if total else float("nan")) for key in COMPOSITION_KEYS}}


def read_ignored_file(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(path, allow_pickle=False) as archive:
        return archive["image_ids"], archive["classes"], [str(n) for n in archive["class_names"]]


def composition_table(results: list[dict], schemes: Sequence[str]) -> str:
    lines = ["| row | column | seeds | entries / epoch | true positives | negatives sharing the colour "
             "of a present object | sharing the shape | other negatives |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({(r["row"], r["scheme"]) for r in results if r.get("ignored")},
                  key=lambda k: (k[0], list(schemes).index(k[1]) if k[1] in schemes else 99))
    for row, scheme in keys:
        cells = [r["ignored"] for r in results
                 if r["row"] == row and r["scheme"] == scheme and r.get("ignored")]
        mean = {key: float(np.mean([c[f"{key}_share"] for c in cells])) for key in COMPOSITION_KEYS}
        entries = float(np.mean([c["entries"] for c in cells]))
        shares = ["-" if np.isnan(mean[key]) else f"{100 * mean[key]:.1f}%" for key in COMPOSITION_KEYS]
        lines.append(f"| {row} | {scheme} | {len(cells)} | {entries:.0f} | " + " | ".join(shares) + " |")
    return "\n".join(lines) if keys else ""
