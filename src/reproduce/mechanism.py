"""What CSL's likelihood top-k ignored in a run's last epoch (``train.py --record_ignored``), classified
against the full labels. First ``prior_ignored``: an entry of a class the prior already ignores (the pick
changes nothing). Of the others: ``true_positive`` (class c is in image i), or a negative that shares with an
object of the image its body colour (``shares_colour``), only a colour through a glyph's core
(``shares_core_colour``: the class's core is the object's body or core colour, or its body the object's
core), or its shape (``shares_shape``); these can overlap; ``other`` shares none.
Attributes: `src.data.embedded.class_attributes` (shape, body colour, core colour).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COMPOSITION_KEYS = ("prior_ignored", "true_positive", "shares_colour", "shares_core_colour", "shares_shape",
                    "other")


def ignored_composition(image_ids: Sequence, classes: Sequence[int], full_labels: np.ndarray,
                        full_image_ids: Sequence, attributes: Sequence[tuple[str, ...]],
                        prior_ignored: Sequence[int] = ()) -> dict:
    """Counts and shares of the ignored entries ``(image_ids[k], classes[k])``; ``full_labels``: dense
    (N, C) of ``full_image_ids``; ``attributes``: (shape, body colour[, core colour]) per class (no core: a
    solid object, core = body); ``prior_ignored``: the classes the run's prior ignored."""
    row_of = {str(image_id): row for row, image_id in enumerate(full_image_ids)}
    missing = [i for i in image_ids if str(i) not in row_of]
    if missing:
        raise ValueError(f"ignored_composition: {len(missing)} ignored entries name images that are not "
                         f"in the full labels (first: {missing[0]!r}); pass the labels of the run's "
                         "training set")
    rows = np.asarray([row_of[str(i)] for i in image_ids], dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    shapes, bodies = (np.asarray([a[k] for a in attributes]) for k in (0, 1))
    cores = np.asarray([a[2] if len(a) > 2 else a[1] for a in attributes])
    present = full_labels[rows] == 1  # (entries, C): the classes in each entry's image
    in_prior = np.isin(classes, np.asarray(list(prior_ignored), dtype=np.int64))
    counted = ~in_prior & ~present[np.arange(len(rows)), classes]  # the negatives outside the prior

    def shares(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
        return (present & (theirs[None, :] == mine[classes][:, None])).any(axis=1)

    same_shape, same_colour = shares(shapes, shapes) & counted, shares(bodies, bodies) & counted
    via_core = (shares(cores, bodies) | shares(cores, cores) | shares(bodies, cores)) & counted & ~same_colour
    counts = {"prior_ignored": int(in_prior.sum()),
              "true_positive": int((~in_prior & ~counted).sum()), "shares_colour": int(same_colour.sum()),
              "shares_core_colour": int(via_core.sum()), "shares_shape": int(same_shape.sum()),
              "other": int((counted & ~same_shape & ~same_colour & ~via_core).sum())}
    total = len(rows)
    return {"entries": total, **counts,
            **{f"{key}_share": (counts[key] / total if total else float("nan")) for key in COMPOSITION_KEYS}}


def read_ignored_file(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(path, allow_pickle=False) as archive:
        return archive["image_ids"], archive["classes"], [str(n) for n in archive["class_names"]]


def composition_table(results: list[dict], schemes: Sequence[str]) -> str:
    lines = ["| row | column | seeds | entries / epoch | in a prior-ignored class | true positives "
             "| negatives sharing the body colour of a present object | a colour only through a core "
             "| sharing the shape | other negatives |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
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
