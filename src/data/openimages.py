"""OpenImages V6 image-level labels as a sparse `LabelMatrix` (9M images x 9,605 classes: ~86 GB dense), from
the official release (`OpenImagesDataset.from_official`) or the CSL authors' processed one (`from_processed`;
its MID lists are parsed by a grammar, never ``eval``-ed); formats: docs/datasets.md. A pair listed twice
is kept once, positive wins over negative, an image without a label is dropped (``load_stats`` counts
each). Memory grows with the annotations, not images x classes (bench/bench_data.py).
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import warnings

import numpy as np
import pandas as pd

from src.data.base import MultiLabelImageDataset, require_dir, require_file
from src.data.image_io import PathSequence
from src.data.labels import DatasetError, LabelMatrix
from src.utils.checkpoint import CheckpointError, read_pth

OFFICIAL_COLUMNS = ("ImageID", "LabelName", "Confidence")
PROCESSED_COLUMNS = ("filepath", "label", "label_neg", "split_name")
UNKNOWN_MID_POLICIES = ("error", "skip")
_CHUNK_ROWS = 50_000  # data.csv rows parsed at once: bounds the Python-string working set


def _strip_quotes(name: str) -> str:
    name = str(name).strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        return name[1:-1]
    return name


def read_class_list(path: str) -> tuple[list[str], list[str] | None]:
    """(MIDs, display names or None) from a trainable-classes .txt or a class-descriptions .csv."""
    require_file(path, "OpenImages class list",
                 "Pass oidv6-classes-trainable.txt or oidv6-class-descriptions.csv")
    if path.endswith(".txt"):
        with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark is no part of the first MID
            mids = [line.strip() for line in handle if line.strip()]
        names = None
    else:
        table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
        if table.shape[1] < 2:
            raise DatasetError(f"{path}: expected two columns LabelName,DisplayName, found {table.shape[1]}")
        if table.iloc[0, 0] == "LabelName":
            table = table.iloc[1:]
        mids, names = table.iloc[:, 0].str.strip().tolist(), table.iloc[:, 1].map(_strip_quotes).tolist()
    if not mids:
        raise DatasetError(f"{path}: the class list is empty")
    if len(set(mids)) != len(mids):
        raise DatasetError(f"{path}: the class list repeats some MIDs; each class must be listed once")
    return mids, names


def read_mid_to_classes(path: str, trust_pickle: bool = False) -> tuple[list[str], list[str]]:
    """(MIDs in key order, display names) from the authors' ``mid_to_classes.pth``."""
    require_file(path, "OpenImages mid_to_classes.pth", "It ships with the authors' processed release, "
                 "next to data.csv (pass its folder as --metadata)")
    try:
        mapping = read_pth(path, allow_pickle=trust_pickle)
    except CheckpointError as exc:
        raise DatasetError(f"{path}: cannot be read as a torch-saved dict of strings ({exc}). If you trust "
                           f"the file, load it with trust_pickle=True") from exc
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"{path}: expected a non-empty dict MID -> display name, "
                           f"got {type(mapping).__name__}")
    return [str(k).strip() for k in mapping], [_strip_quotes(v) for v in mapping.values()]


def build_label_csr(rows: np.ndarray, cols: np.ndarray, positive: np.ndarray, num_rows: int,
                    num_classes: int) -> tuple[LabelMatrix, dict]:
    """Sparse LabelMatrix (and counts) from COO triplets; duplicates kept once, positive wins."""
    key = rows.astype(np.int64) * num_classes + cols.astype(np.int64)
    order = np.lexsort((~positive, key))  # by key, positives first within a key
    key, positive = key[order], positive[order]
    if len(key):
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], len(key)] - 1
        conflicts = int(np.count_nonzero(positive[starts] & ~positive[ends]))
    else:
        starts, conflicts = np.zeros(0, dtype=np.int64), 0
    stats = {"duplicate_labels": int(len(key) - len(starts) - conflicts), "conflicting_labels": conflicts}
    key, positive = key[starts], positive[starts]
    csr = []
    for mask in (positive, ~positive):
        chosen = key[mask]
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(chosen // num_classes, minlength=num_rows), out=indptr[1:])
        csr.append((indptr, (chosen % num_classes).astype(np.int32)))
    return LabelMatrix.from_csr(*csr[0], *csr[1], num_classes, validate=False), stats


def keep_labelled_rows(labels: LabelMatrix, stats: dict) -> tuple[np.ndarray, LabelMatrix]:
    """The rows with a known label and their labels; ``stats`` counts the others."""
    keep = np.flatnonzero(labels.annotated_counts_per_row() > 0)
    stats["images_without_labels"] = int(labels.num_samples - len(keep))
    return keep, labels.subset(keep)


class SkippedLabelsWarning(UserWarning):
    """Labels were dropped while reading (MIDs outside the class list)."""


def _unknown_mids(source: str, unknown: np.ndarray, policy: str, examples) -> int:
    n_unknown = int(np.count_nonzero(unknown))
    if n_unknown and policy == "error":
        raise DatasetError(f"{source}: {n_unknown} labels use MIDs that are not in the class list (e.g. "
                           f"{list(examples)[:5]}). Use the class file of the same release, or pass "
                           f"unknown_mids='skip' (--unknown_mids skip) to ignore them")
    return n_unknown


def _labelled_rows(source: str, rows, cols, positive, num_rows: int, num_classes: int, n_unknown: int):
    """(rows kept, their LabelMatrix, stats) of the COO labels of a reader (and its warning)."""
    labels, stats = build_label_csr(rows, cols, positive, num_rows, num_classes)
    stats["unknown_mid_labels"] = n_unknown
    if n_unknown:
        warnings.warn(f"{source}: skipped {n_unknown} labels whose MIDs are not in the class list (expected "
                      f"for the official CSVs, which cover ~20k classes); --unknown_mids error makes this "
                      f"an error and lists them", SkippedLabelsWarning, stacklevel=3)
    return (*keep_labelled_rows(labels, stats), stats)


def _to_bytes(values) -> np.ndarray:
    return np.array([str(v).encode("utf-8") for v in values], dtype=bytes)


def read_official_labels(csv_path: str, class_mids: list[str], unknown_mids: str = "skip"):
    """(ImageIDs as bytes array, sparse LabelMatrix, stats) from a human-verified image-labels CSV."""
    require_file(csv_path, "OpenImages image-level labels CSV", "Pass e.g. "
                 "oidv6-train-annotations-human-imagelabels.csv (header ImageID,Source,LabelName,Confidence)")
    try:
        table = pd.read_csv(csv_path, usecols=list(OFFICIAL_COLUMNS),
                            dtype={"ImageID": "category", "LabelName": "category", "Confidence": np.float32})
    except ValueError as exc:
        raise DatasetError(f"{csv_path}: cannot read columns {OFFICIAL_COLUMNS} ({exc}); the official file "
                           f"has the header ImageID,Source,LabelName,Confidence") from exc
    confidence = table["Confidence"].to_numpy()
    if not np.isin(confidence, (0.0, 1.0)).all():
        raise DatasetError(f"{csv_path}: Confidence must be 0 or 1 (human-verified labels); found "
                           f"{np.unique(confidence[~np.isin(confidence, (0.0, 1.0))])[:5].tolist()}. "
                           f"Machine-generated label files are not supported")
    column_of = {mid: c for c, mid in enumerate(class_mids)}
    label_categories = table["LabelName"].cat.categories
    category_to_column = np.array([column_of.get(m, -1) for m in label_categories], dtype=np.int32)
    cols = category_to_column[table["LabelName"].cat.codes.to_numpy()]
    image_categories = table["ImageID"].cat.categories
    image_codes = table["ImageID"].cat.codes.to_numpy()
    del table
    unknown = cols < 0
    n_unknown = _unknown_mids(csv_path, unknown, unknown_mids,
                              label_categories[category_to_column < 0])
    known = ~unknown
    keep, labels, stats = _labelled_rows(csv_path, image_codes[known], cols[known], confidence[known] == 1.0,
                                         len(image_categories), len(class_mids), n_unknown)
    return _to_bytes(image_categories[keep]), labels, stats


_QUOTED_MID = "'[^'\"]*'|\"[^'\"]*\""  # a MID in single or double quotes
_MID_LIST = re.compile(rf"""\[\s*(?:(?:{_QUOTED_MID})\s*(?:,\s*(?:{_QUOTED_MID})\s*)*,?\s*)?\]""")
_MID_TOKEN = re.compile(r"""['"]([^'"]*)['"]""")


def _parse_mid_lists(values: pd.Series, source: str, column: str):
    """Row positions and MIDs of Python-literal lists like "['/m/01', '/m/02']", each checked against the
    grammar (the Series keeps read_csv's row index: ``index + 2`` is the line)."""
    texts = [t.strip() or "[]" for t in values.fillna("").astype(str).tolist()]  # empty field = []
    tokens = []
    for position, text in enumerate(texts):
        if not _MID_LIST.fullmatch(text):
            raise DatasetError(f"{source}: line {values.index[position] + 2}, column {column}: {text!r} "
                               f"is not a list of quoted MIDs like ['/m/01g317', '/m/09j2d']")
        tokens.append(_MID_TOKEN.findall(text))
    counts = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    mids = np.fromiter(itertools.chain.from_iterable(tokens), dtype=object, count=int(counts.sum()))
    return np.repeat(np.arange(len(tokens), dtype=np.int64), counts), mids


def _pick_split(csv_path: str, split_names: tuple[str, ...]) -> str:
    available = pd.read_csv(csv_path, usecols=["split_name"], dtype={"split_name": "category"})
    present = set(available["split_name"].cat.categories)
    for name in split_names:
        if name in present:
            return name
    raise DatasetError(f"{csv_path}: no row has split_name in {list(split_names)}; the file has "
                       f"{sorted(present)}. Pass one of those as the split")


def read_processed_labels(csv_path: str, class_mids: list[str], split: str | tuple[str, ...],
                          unknown_mids: str = "error"):
    """(file paths as bytes array, sparse LabelMatrix, stats) for one split of the authors' data.csv."""
    require_file(csv_path, "OpenImages data.csv", "It ships with the authors' processed release (pass its "
                 "folder as --metadata)")
    split_names = (split,) if isinstance(split, str) else tuple(split)
    categories = pd.Index(class_mids)
    paths, rows, cols, positive = [], [], [], []
    n_rows, n_unknown = 0, 0
    try:
        split_name = _pick_split(csv_path, split_names)
        # The with-block closes the file also when a row is malformed (the reader keeps it open otherwise).
        with pd.read_csv(csv_path, usecols=list(PROCESSED_COLUMNS), dtype=str, keep_default_na=False,
                         chunksize=_CHUNK_ROWS) as chunks:
            for chunk in chunks:
                selected = chunk[chunk["split_name"] == split_name]
                for column, is_positive in (("label", True), ("label_neg", False)):
                    local_rows, mids = _parse_mid_lists(selected[column], csv_path, column)
                    codes = categories.get_indexer(mids).astype(np.int32)
                    unknown = codes < 0
                    n_unknown += _unknown_mids(csv_path, unknown, unknown_mids, mids[unknown])
                    rows.append(local_rows[~unknown] + n_rows)
                    cols.append(codes[~unknown])
                    positive.append(np.full(int((~unknown).sum()), is_positive))
                paths.append(_to_bytes(selected["filepath"]))
                n_rows += len(selected)
    except DatasetError:
        raise
    except ValueError as exc:  # missing columns, or a row pandas cannot split (pd.errors.ParserError)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"{csv_path}: cannot be read as the processed release's data.csv ({first_line}); "
                           f"its header is filepath,label,label_neg,split_name with one image per "
                           f"row") from None
    keep, labels, stats = _labelled_rows(csv_path, np.concatenate(rows), np.concatenate(cols),
                                         np.concatenate(positive), n_rows, len(class_mids), n_unknown)
    return np.concatenate(paths)[keep], labels, stats


class OpenImagesDataset(MultiLabelImageDataset):
    """OpenImages V6 with sparse labels; build it with `from_official` or `from_processed`."""

    def __init__(self, root: str, image_ids, image_paths, labels: LabelMatrix, class_mids: list[str],
                 class_names: list[str], source: str, transform=None, target_transform=None,
                 skip_bad_images: bool = False, load_stats: dict | None = None):
        self.root = root
        self.image_ids = image_ids
        self.image_paths = image_paths
        self.labels = labels
        self.class_mids = list(class_mids)
        self.class_names = list(class_names)
        self.transform = transform
        self.target_transform = target_transform
        self.load_stats = dict(load_stats or {})
        self._finish_init(source, skip_bad_images)

    @classmethod
    def from_official(cls, root: str, annotations_csv: str, classes_file: str, split_dir: str,
                      descriptions_csv: str | None = None, unknown_mids: str = "skip", **kwargs):
        """Official CSVs; images at ``{root}/{split_dir}/{ImageID}.jpg``."""
        _check_policy(unknown_mids)
        require_dir(os.path.join(root, split_dir), "OpenImages image folder",
                    f"Put the {split_dir} images (ImageID.jpg) there or fix --data")
        mids, names = read_class_list(classes_file)
        if names is None and descriptions_csv:
            described_mids, described_names = read_class_list(descriptions_csv)
            lookup = dict(zip(described_mids, described_names))
            names = [lookup.get(m, m) for m in mids]
        image_ids, labels, stats = read_official_labels(annotations_csv, mids, unknown_mids)
        paths = PathSequence(root, image_ids, prefix=split_dir + "/", suffix=".jpg")
        return cls(root, image_ids, paths, labels, mids, names or mids, annotations_csv, load_stats=stats,
                   **kwargs)

    @classmethod
    def from_processed(cls, root: str, data_csv: str, mid_to_classes: str,
                       split: str | tuple[str, ...] = "train", unknown_mids: str = "error",
                       trust_pickle: bool = False, **kwargs):
        """The authors' data.csv + mid_to_classes.pth; images at ``{root}/{filepath}``."""
        _check_policy(unknown_mids)
        require_dir(root, "OpenImages image folder", "Pass the folder that data.csv's filepath values are "
                    "relative to as --data")
        mids, names = read_mid_to_classes(mid_to_classes, trust_pickle=trust_pickle)
        paths, labels, stats = read_processed_labels(data_csv, mids, split, unknown_mids)
        return cls(root, paths, PathSequence(root, paths), labels, mids, names, data_csv, load_stats=stats,
                   **kwargs)


def _check_policy(unknown_mids: str) -> None:
    if unknown_mids not in UNKNOWN_MID_POLICIES:
        raise ValueError(f"unknown_mids must be one of {UNKNOWN_MID_POLICIES}, got {unknown_mids!r}")


def _glob_one(folder: str, patterns: list[str]) -> str | None:
    for pattern in patterns:
        found = sorted(glob.glob(os.path.join(folder, pattern)))
        if found:
            return found[0]
    return None


def _find_label_files(folder: str, split_dir: str):
    data_csv = os.path.join(folder, "data.csv")
    if os.path.isfile(data_csv):
        return "processed", data_csv, None, None
    annotations = _glob_one(folder, [f"*{split_dir}-annotations-human-imagelabels*.csv"])
    classes = _glob_one(folder, ["*classes-trainable*.txt", "*class-descriptions*.csv"])
    if annotations is None or classes is None:
        return None
    return "official", annotations, classes, _glob_one(folder, ["*class-descriptions*.csv"])


def openimages_dataset(split: str, transform=None, *, data: str, metadata: str | None = None,
                       skip_bad_images: bool = False, unknown_mids: str | None = None,
                       val_split: str = "validation") -> OpenImagesDataset:
    """Images under ``data``; label files in ``metadata``, else in ``data`` (--metadata defaults to the COCO
    folder). The val split is data.csv's first of val / validation / test, or the official ``val_split``."""
    common = {"transform": transform, "skip_bad_images": bool(skip_bad_images)}
    if unknown_mids:
        common["unknown_mids"] = unknown_mids
    split_dir = "train" if split == "train" else val_split
    folders = list(dict.fromkeys(f for f in (metadata, data) if f))
    found = next((hit for hit in (_find_label_files(f, split_dir) for f in folders) if hit), None)
    if found is None:
        looked = "; ".join(f"{f}{'' if os.path.isdir(f) else ' (does not exist)'}" for f in folders)
        raise DatasetError(f"OpenImages {split} label files not found; looked in {looked} for data.csv + "
                           f"mid_to_classes.pth (the authors' processed release) or "
                           f"*{split_dir}-annotations-human-imagelabels*.csv + oidv6-classes-trainable.txt "
                           f"(the official release). Pass --metadata DIR, the folder holding these files "
                           f"(and --data, the image folder)")
    kind, labels_file, classes, descriptions = found
    if kind == "processed":
        names = ("train",) if split == "train" else ("val", "validation", "test")
        mid_to_classes = os.path.join(os.path.dirname(labels_file), "mid_to_classes.pth")
        return OpenImagesDataset.from_processed(data, labels_file, mid_to_classes, split=names, **common)
    return OpenImagesDataset.from_official(data, labels_file, classes, split_dir,
                                           descriptions_csv=descriptions, **common)
