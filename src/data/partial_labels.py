"""Simulate partial annotation on a fully labelled (N x C) matrix of 1 (positive), 0 (negative) and -1
(un-annotated), and read / write partial label files (``.npz``, checked against the dataset they are
loaded for). A mode only turns annotated entries into -1; (labels, mode, param, seed) fixes the result.
The modes (``fpc``, ``rps``, ``known_ratio``, ``single_positive``) and the file checks: docs/usage.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from src.data.labels import LabelMatrix, validate_label_matrix
from src.utils.cli import ConfigError

MODE_ALIASES = {
    "fpc": "fix_per_class",
    "fix_per_class": "fix_per_class",
    "rps": "random_per_sample",
    "random_per_sample": "random_per_sample",
    "known_ratio": "known_ratio",
    "single_positive": "single_positive",
}
SIMULATION_MODES = tuple(MODE_ALIASES)

# Rows handled at once by the row-wise modes: bounds the temporary float64 matrices to ~rows x C.
_ROW_BLOCK = 8192


def canonical_mode(mode: str) -> str:
    if not isinstance(mode, str) or mode not in MODE_ALIASES:
        raise ValueError(
            f"simulate_partial_type={mode!r} is not a partial-label simulation mode; "
            f"use one of {', '.join(SIMULATION_MODES)}"
        )
    return MODE_ALIASES[mode]


def _validate_param(mode: str, param) -> float:
    if mode == "single_positive" and param is None:
        return 0.0  # the mode has no parameter
    try:
        value = float(param)
    except (TypeError, ValueError):
        raise ValueError(f"simulate_partial_param={param!r} for mode {mode!r} must be a number") from None
    if mode == "fix_per_class":
        if not math.isfinite(value) or value < 0 or value != int(value):
            raise ValueError(
                f"simulate_partial_param={param!r} for mode 'fpc' is the number of positive and of negative "
                "samples kept per class: use a non-negative integer such as 1000"
            )
    elif mode in ("random_per_sample", "known_ratio"):
        if not 0.0 <= value <= 1.0:
            meaning = "probability of removing a label" if mode == "random_per_sample" else "kept fraction"
            raise ValueError(
                f"simulate_partial_param={param!r} for mode {mode!r} is the {meaning}: use a value in [0, 1]"
            )
    return value


def known_count(ratio: float, counts: np.ndarray) -> np.ndarray:
    """How many of ``counts`` labels ``known_ratio`` keeps: 0 if r == 0 or n == 0, else
    max(1, floor(r * n + 0.5))."""
    counts = np.asarray(counts, dtype=np.int64)
    kept = np.floor(ratio * counts + 0.5).astype(np.int64)
    if ratio > 0:
        kept = np.where(counts > 0, np.maximum(kept, 1), 0)
    return np.minimum(kept, counts)


def keep_random_k(candidates: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bool mask keeping a uniform ``k[i]``-subset of each row's True entries (the first k by random key)."""
    keys = rng.random(candidates.shape)
    keys[~candidates] = 2.0
    order = np.argsort(keys, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(candidates.shape[1])[None, :], axis=1)
    return candidates & (ranks < k[:, None])


def _fix_per_class(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.full_like(labels, -1)
    for c in range(labels.shape[1]):
        column = labels[:, c]
        for value in (1, 0):
            rows = np.flatnonzero(column == value)
            chosen = rng.choice(rows, size=min(n, rows.size), replace=False)
            out[chosen, c] = value
    return out


def _random_per_sample(labels: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    out = labels.copy()
    for start in range(0, labels.shape[0], _ROW_BLOCK):
        block = out[start : start + _ROW_BLOCK]
        block[rng.random(block.shape) < p] = -1
    return out


def _per_image(labels: np.ndarray, mode: str, ratio: float, rng: np.random.Generator) -> np.ndarray:
    out = np.full_like(labels, -1)
    for start in range(0, labels.shape[0], _ROW_BLOCK):
        block = labels[start : start + _ROW_BLOCK]
        for value in (1, 0):
            candidates = block == value
            n_candidates = candidates.sum(axis=1)
            if mode == "single_positive":
                keep_count = np.minimum(n_candidates, 1) if value == 1 else np.zeros_like(n_candidates)
            else:
                keep_count = known_count(ratio, n_candidates)
            keep = keep_random_k(candidates, keep_count, rng)
            out[start : start + _ROW_BLOCK][keep] = value
    return out


def simulate_partial_labels(labels, mode: str, param: float | None = None, seed: int = 0) -> np.ndarray:
    """A new int8 (N x C) matrix: ``labels`` with partial annotation simulated by ``mode``."""
    mode = canonical_mode(mode)
    full = validate_label_matrix(labels)
    value = _validate_param(mode, param)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r} must be an integer")
    rng = np.random.default_rng(int(seed))
    if mode == "fix_per_class":
        return _fix_per_class(full, int(value), rng)
    if mode == "random_per_sample":
        return _random_per_sample(full, value, rng)
    return _per_image(full, mode, value, rng)


@dataclass
class ClassStatistics:
    """Per-class counts before and after simulation (arrays of length C)."""

    original_positive: np.ndarray
    original_negative: np.ndarray
    kept_positive: np.ndarray
    kept_negative: np.ndarray
    unannotated: np.ndarray
    summary: dict = field(default_factory=dict)


def class_statistics(original, simulated) -> ClassStatistics:
    original = validate_label_matrix(original, "original labels")
    simulated = validate_label_matrix(simulated, "simulated labels")
    if original.shape != simulated.shape:
        raise ValueError(f"original labels {original.shape} and simulated labels {simulated.shape} differ")
    stats = ClassStatistics(
        original_positive=(original == 1).sum(0),
        original_negative=(original == 0).sum(0),
        kept_positive=(simulated == 1).sum(0),
        kept_negative=(simulated == 0).sum(0),
        unannotated=(simulated == -1).sum(0),
    )
    total = max(original.size, 1)
    stats.summary = {
        "images": int(original.shape[0]),
        "classes": int(original.shape[1]),
        "annotated_fraction_original": float((original != -1).sum() / total),
        "annotated_fraction_simulated": float((simulated != -1).sum() / total),
        "positives_original": int(stats.original_positive.sum()),
        "positives_kept": int(stats.kept_positive.sum()),
        "negatives_original": int(stats.original_negative.sum()),
        "negatives_kept": int(stats.kept_negative.sum()),
        "images_without_known_positive": int((~(simulated == 1).any(1)).sum()),
        "images_without_any_label": int((~(simulated != -1).any(1)).sum()),
    }
    return stats


def format_class_statistics(
    stats: ClassStatistics, class_names: Sequence[str], max_rows: int | None = None
) -> str:
    header = f"{'class':<24}{'pos':>8}{'kept pos':>10}{'neg':>8}{'kept neg':>10}{'un-ann':>9}"
    lines = [header, "-" * len(header)]
    for c in range(len(class_names) if max_rows is None else min(max_rows, len(class_names))):
        lines.append(
            f"{str(class_names[c])[:23]:<24}{stats.original_positive[c]:>8}{stats.kept_positive[c]:>10}"
            f"{stats.original_negative[c]:>8}{stats.kept_negative[c]:>10}{stats.unannotated[c]:>9}"
        )
    if max_rows is not None and max_rows < len(class_names):
        lines.append(f"... ({len(class_names) - max_rows} more classes)")
    s = stats.summary
    lines.append(
        f"images {s['images']}, classes {s['classes']}: annotated "
        f"{100 * s['annotated_fraction_original']:.1f}% "
        f"-> {100 * s['annotated_fraction_simulated']:.1f}%; positives {s['positives_original']} -> "
        f"{s['positives_kept']}; negatives {s['negatives_original']} -> {s['negatives_kept']}; images "
        f"without a known positive {s['images_without_known_positive']}, without any label "
        f"{s['images_without_any_label']}"
    )
    return "\n".join(lines)


def simulate_dataset(dataset, mode: str, param: float, seed: int = 0) -> dict:
    """Replace ``dataset``'s labels by a simulated partial draw; returns `class_statistics`' summary."""
    if param is None:
        raise ValueError(f"--simulate_partial_type {mode} needs --simulate_partial_param (e.g. 1000 for fpc)")
    original = _dense(dataset.labels)
    simulated = simulate_partial_labels(original, mode, param, seed)
    check_simulated(simulated, mode, param)
    dataset.set_labels(simulated)
    return class_statistics(original, simulated).summary


_RAISE_PARAM = {
    "fix_per_class": "it is the positives (and negatives) kept per class: use 1 or more (e.g. 1000)",
    "random_per_sample": "it is the probability of removing each label: use a value below 1 (e.g. 0.5)",
    "known_ratio": "it is the fraction of labels kept: use a value above 0 (e.g. 0.1)",
    "single_positive": "the dataset has no positive label to keep: check --data / --metadata",
}


def check_simulated(simulated: np.ndarray, mode: str, param) -> None:
    """Refuse a draw that leaves no positive label: training on it learns nothing (loss 0 or all negative)."""
    if (simulated == 1).any():
        return
    what = "no annotated label" if (simulated == -1).all() else "no positive label"
    raise ConfigError(f"--simulate_partial_type {mode} --simulate_partial_param {param} leaves {what} on "
                      f"{simulated.shape[0]} images to train on; {_RAISE_PARAM[canonical_mode(mode)]}")


def describe_simulation(mode: str, param: float, seed: int, summary: dict) -> str:
    return (f"Simulated partial labels: mode {canonical_mode(mode)}, param {param}, seed {seed}: annotated "
            f"{100 * summary['annotated_fraction_original']:.1f}% -> "
            f"{100 * summary['annotated_fraction_simulated']:.1f}%, "
            f"positives {summary['positives_original']} -> {summary['positives_kept']}")


# Partial label files ---------------------------------------------------------------------------
_FILE_FIELDS = ("labels", "class_names", "image_ids", "meta")


@dataclass
class PartialLabelFile:
    labels: np.ndarray
    class_names: list[str]
    image_ids: list
    meta: dict


def _ids_array(image_ids: Sequence) -> np.ndarray:
    ids = list(image_ids)
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return np.asarray(ids, dtype=np.int64)
    return np.asarray([str(i) for i in ids], dtype=str)


FINGERPRINT_KEY = "full_labels_sha256"
_REGENERATE = ("regenerate it with `python -m coco_simulation --data ... --out FILE.npz` on this dataset, "
               "or drop --partial_labels")


def _dense(labels) -> np.ndarray:
    return validate_label_matrix(labels.to_dense() if hasattr(labels, "to_dense") else labels, "full labels")


def label_fingerprint(full_labels, class_names: Sequence[str]) -> str:
    """sha256 (hex) of a full label matrix (`LabelMatrix.fingerprint`) and its class names."""
    matrix = full_labels
    if not isinstance(matrix, LabelMatrix):
        matrix = LabelMatrix.from_dense(_dense(full_labels))
    digest = hashlib.sha256(json.dumps([str(n) for n in class_names]).encode())
    digest.update(matrix.fingerprint().encode())
    return digest.hexdigest()


def save_partial_labels(
    path, labels, class_names: Sequence[str], image_ids: Sequence, meta: dict | None = None,
    full_labels=None,
):
    """``full_labels``, the matrix the partial labels were simulated from, adds its `label_fingerprint`."""
    labels = validate_label_matrix(labels)
    class_names = [str(name) for name in class_names]
    image_ids = list(image_ids)
    if labels.shape != (len(image_ids), len(class_names)):
        raise ValueError(
            f"labels have shape {labels.shape} but there are {len(image_ids)} image ids and "
            f"{len(class_names)} class names; pass the ids and names of the labelled dataset"
        )
    meta = dict(meta or {})
    if full_labels is not None:
        full = _dense(full_labels)
        if full.shape != labels.shape:
            raise ValueError(f"full_labels have shape {full.shape} but the partial labels {labels.shape}; "
                             f"pass the matrix the partial labels were simulated from")
        meta[FINGERPRINT_KEY] = label_fingerprint(full, class_names)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"partial label file {path!r} must end with .npz")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(
        path,
        labels=labels,
        class_names=np.asarray(class_names, dtype=str),
        image_ids=_ids_array(image_ids),
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    return path


def _first_differences(expected: Sequence, found: Sequence, limit: int = 3) -> str:
    diffs = [f"#{i}: file {f!r} vs dataset {e!r}" for i, (e, f) in enumerate(zip(expected, found)) if e != f]
    text = "; ".join(diffs[:limit])
    if len(diffs) > limit:
        text += f"; ... ({len(diffs)} differ)"
    return text


def _check_matches(path: str, what: str, stored: list, expected: Sequence | None) -> None:
    if expected is None:
        return
    expected, stored = [str(x) for x in expected], [str(x) for x in stored]
    if stored == expected:
        return
    if len(stored) != len(expected):
        detail = f"the file has {len(stored)} {what}, the dataset has {len(expected)}"
    elif sorted(stored) == sorted(expected):
        detail = f"same {what} in a different order ({_first_differences(expected, stored)})"
    else:
        detail = _first_differences(expected, stored)
    raise ValueError(
        f"partial label file {path}: {what} do not match the dataset ({detail}). The file was made for "
        f"another dataset or annotation file; {_REGENERATE}"
    )


class PartialLabelFileNotFoundError(FileNotFoundError, ValueError):
    """The partial label file does not exist (catchable as FileNotFoundError or ValueError)."""


def _read_archive(path: str) -> dict:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            start = handle.read(40)
        raise ValueError(f"partial label file {path} (--partial_labels) is not a .npz archive (it starts "
                         f"with {start!r}); pass the .npz written by `python -m coco_simulation --out X.npz`")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:  # not an npz, corrupt, or pickled
        raise ValueError(
            f"partial label file {path} is not a readable .npz archive ({error}); regenerate it with "
            "`python -m coco_simulation`"
        ) from None


def read_partial_label_file(path) -> PartialLabelFile:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PartialLabelFileNotFoundError(
            f"partial label file {path} does not exist; create it with "
            f"`python -m coco_simulation --out {path} ...`"
        )
    contents = _read_archive(path)
    missing = [name for name in _FILE_FIELDS if name not in contents]
    if missing:
        raise ValueError(
            f"partial label file {path} lacks field(s) {missing} (has {sorted(contents)}); it was not "
            "written by coco_simulation.save_partial_labels - regenerate it with `python -m coco_simulation`"
        )
    labels = validate_label_matrix(contents["labels"], f"labels in {path}")
    class_names = contents["class_names"].tolist()
    image_ids = contents["image_ids"].tolist()
    if labels.shape != (len(image_ids), len(class_names)):
        raise ValueError(
            f"partial label file {path}: labels shape {labels.shape} does not match {len(image_ids)} image "
            f"ids x {len(class_names)} class names; the file is corrupt - regenerate it"
        )
    return PartialLabelFile(labels, class_names, image_ids, json.loads(str(contents["meta"])))


def _made_from(meta: dict) -> str:
    source = meta.get("annotation_file")
    return f" (the file was made from {source})" if source else ""


def _check_source(path: str, contents: PartialLabelFile, full_labels) -> None:
    full = _dense(full_labels)
    if full.shape != contents.labels.shape:
        raise ValueError(f"partial label file {path}: labels shape {contents.labels.shape} does not match "
                         f"the dataset's {full.shape}; regenerate it on this dataset")
    partial = contents.labels
    differ = (partial != -1) & (full != -1) & (partial != full)
    if differ.any():
        rows, cols = np.nonzero(differ)
        examples = "; ".join(
            f"image {contents.image_ids[r]!r}, class {contents.class_names[c]!r}: file {int(partial[r, c])}, "
            f"dataset {int(full[r, c])}" for r, c in zip(rows[:3], cols[:3]))
        raise ValueError(
            f"partial label file {path} does not fit this dataset: {len(rows)} of its "
            f"{int((partial != -1).sum())} labels contradict the dataset's annotations ({examples})"
            f"{_made_from(contents.meta)}. It was made for another dataset with the same image ids and "
            f"class names; {_REGENERATE}"
        )
    stored = contents.meta.get(FINGERPRINT_KEY)
    if stored is not None and not (full == -1).any():
        found = label_fingerprint(full, contents.class_names)
        if found != stored:
            raise ValueError(
                f"partial label file {path} was simulated from other full labels than this dataset's "
                f"(fingerprint {str(stored)[:12]}... in the file, {found[:12]}... here)"
                f"{_made_from(contents.meta)}: the labels it kept agree, but labels it dropped do not; "
                f"{_REGENERATE}"
            )


def load_partial_labels(path, class_names: Sequence[str] | None = None, image_ids: Sequence | None = None,
                        full_labels=None):
    """The int8 labels of a file; given ``class_names`` / ``image_ids`` must equal the stored ones in order
    (ids as strings); given ``full_labels`` (array or `LabelMatrix`) must agree with the file's labels
    and, when complete, match its ``FINGERPRINT_KEY``."""
    contents = read_partial_label_file(path)
    _check_matches(os.fspath(path), "class names", contents.class_names, class_names)
    _check_matches(os.fspath(path), "image ids", contents.image_ids, image_ids)
    if full_labels is not None:
        _check_source(os.fspath(path), contents, full_labels)
    return contents.labels
