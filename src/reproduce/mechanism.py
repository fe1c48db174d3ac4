"""What CSL's likelihood top-k ignores, measured: the composition of the entries it dropped in the last
epoch of a run (``train.py --record_ignored`` writes them), classified against the full labels.

An ignored entry (image i, class c) is one of:

* ``true_positive``: class c is in image i (the selection did what it is meant to do);
* a negative (c is not in image i) that shares an attribute with an object that *is* in the image -
  ``shares_colour`` (same colour, other shape) or ``shares_shape`` (same shape, other colour); a negative
  sharing both (with two different objects) counts in both;
* ``other``: a negative sharing neither.

Fractions are of all ignored entries. The attributes come from `src.data.embedded.class_attributes`
(shape and body colour of each class, in both designs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COMPOSITION_KEYS = ("true_positive", "shares_colour", "shares_shape", "other")


def ignored_composition(image_ids: Sequence, classes: Sequence[int], full_labels: np.ndarray,
                        full_image_ids: Sequence, attributes: Sequence[tuple[str, str]]) -> dict:
    """Counts and fractions of the ignored entries ``(image_ids[k], classes[k])`` by `COMPOSITION_KEYS`.

    ``full_labels``: the dense full label matrix (N, C) of the training images ``full_image_ids``;
    ``attributes``: (shape, colour) per class."""
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
    """(image ids, classes, class names) of a ``<path_dest>/ignored_last_epoch.npz``."""
    with np.load(path, allow_pickle=False) as archive:
        return archive["image_ids"], archive["classes"], [str(n) for n in archive["class_names"]]


def composition_table(results: list[dict], schemes: Sequence[str]) -> str:
    """Markdown: per row and column, the mean composition of the ignored entries over the seeds."""
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
