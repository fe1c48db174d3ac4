"""Your own partially labelled data as CSV (docs/your_data.md): ``train.csv`` and ``val.csv`` (or
``test.csv``) with an ``image`` column of paths relative to the image root (``--data``). Two layouts, told by
the header: wide ``image,<class>,...`` (cells 1, 0, -1 or empty = not annotated) and lists
``image,positives,negatives`` (';'-separated class names, every other class -1). Class order:
``classes.txt`` next to the CSVs, else the sorted names of train.csv. Labels are stored sparse: memory grows
with the annotations, not images x classes.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import os

import numpy as np

from src.data.base import MultiLabelImageDataset
from src.data.image_io import PathSequence
from src.data.labels import DatasetError, LabelMatrix

CSV_LAYOUTS = ("lists", "wide")
LIST_COLUMNS = ("image", "positives", "negatives")
CLASSES_FILE = "classes.txt"
SPLIT_FILES = {"train": ("train.csv",), "val": ("val.csv", "test.csv")}
_WIDE_VALUES = {"1": 1, "0": 0, "-1": -1, "": -1}
_FORMAT_HINT = ("the header is image,positives,negatives (lists of class names separated by ';') or "
                "image,<class>,<class>,... (cells 1, 0, -1 or empty); see docs/your_data.md")


def _names(text: str) -> list[str]:
    """The ';'-separated class names of a lists cell, stripped, each once."""
    return list(dict.fromkeys(name for name in (part.strip() for part in text.split(";")) if name))


def read_classes_file(path: str) -> list[str]:
    """The class order of ``classes.txt``: one name a line, blank lines skipped."""
    names, line_of = [], {}
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, 1):
            name = line.strip()
            if not name:
                continue
            if name in line_of:
                raise DatasetError(f"{path}: line {line_no}: class {name!r} is already listed on line "
                                   f"{line_of[name]}; list each class once")
            line_of[name] = line_no
            names.append(name)
    if not names:
        raise DatasetError(f"{path}: the class list is empty; write one class name a line, or delete the "
                           f"file to take the sorted names of train.csv")
    return names


@contextlib.contextmanager
def _open_csv(path: str):
    """(header, iterator of (line number, cells)); the file is read as UTF-8 with or without a BOM."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = [cell.strip() for cell in next(reader, [])]
        if not header:
            raise DatasetError(f"{path}: the file is empty; {_FORMAT_HINT}")
        yield header, ((reader.line_num, cells) for cells in reader if any(cell.strip() for cell in cells))


def _layout(path: str, header: list[str]) -> str:
    if "image" not in header:
        raise DatasetError(f"{path}: line 1: missing column 'image' (found {header[:5]}); {_FORMAT_HINT}")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated or "" in header:
        raise DatasetError(f"{path}: line 1: column names must be unique and non-empty (repeated: "
                           f"{duplicated[:5]}); rename the columns")
    if "positives" not in header and "negatives" not in header:
        if len(header) == 1:
            raise DatasetError(f"{path}: line 1: no class column next to 'image'; {_FORMAT_HINT}")
        return "wide"
    missing = [name for name in LIST_COLUMNS if name not in header]
    extra = [name for name in header if name not in LIST_COLUMNS]
    if missing or extra:
        found = "; ".join(f"{what} {names}" for what, names in (("missing", missing), ("unexpected", extra))
                          if names)
        raise DatasetError(f"{path}: line 1: the lists layout has exactly the columns image,positives,"
                           f"negatives; {found}. Fix the header")
    return "lists"


@functools.lru_cache(maxsize=4)
def _seen_class_names(path: str, _mtime_ns: int, _size: int) -> tuple[str, ...]:
    seen = set()
    with _open_csv(path) as (header, rows):
        if _layout(path, header) == "wide":
            return tuple(sorted(name for name in header if name != "image"))
        columns = [header.index("positives"), header.index("negatives")]
        for _, cells in rows:
            for column in columns:
                if column < len(cells):
                    seen.update(_names(cells[column]))
    if not seen:
        raise DatasetError(f"{path}: no class name in the positives or negatives column; list each image's "
                           f"classes, or give the class order in {CLASSES_FILE}")
    return tuple(sorted(seen))


def csv_class_names(folder: str) -> list[str]:
    """The class order of a CSV dataset: ``classes.txt`` if present, else the sorted names of train.csv."""
    classes_file = os.path.join(folder, CLASSES_FILE)
    if os.path.isfile(classes_file):
        return read_classes_file(classes_file)
    train_csv = os.path.join(folder, "train.csv")
    if not os.path.isfile(train_csv):
        raise DatasetError(f"{folder}: neither {CLASSES_FILE} nor train.csv, which give the class order; put "
                           f"them next to the evaluation CSV (--metadata)")
    stat = os.stat(train_csv)
    return list(_seen_class_names(train_csv, stat.st_mtime_ns, stat.st_size))


def read_csv_labels(path: str, class_names: list[str]) -> tuple[list[str], np.ndarray, LabelMatrix, str]:
    """(image paths as written, their line numbers, sparse labels over ``class_names``, layout)."""
    column_of = {name: c for c, name in enumerate(class_names)}
    known = f"the {len(class_names)} classes of {CLASSES_FILE} or, without it, of train.csv"
    images, lines, pos_ids, neg_ids, pos_counts, neg_counts = [], [], [], [], [], []
    first_line = {}
    with _open_csv(path) as (header, rows):
        layout = _layout(path, header)
        image_column = header.index("image")
        if layout == "wide":
            unknown = [name for name in header if name != "image" and name not in column_of]
            if unknown:
                raise DatasetError(f"{path}: line 1: column(s) {unknown[:5]} are not among {known}; rename "
                                   f"them or add the classes to {CLASSES_FILE}")
            wide_columns = [(i, column_of[name]) for i, name in enumerate(header) if name != "image"]
        else:
            pos_column, neg_column = header.index("positives"), header.index("negatives")
        for line_no, cells in rows:
            if len(cells) != len(header):
                raise DatasetError(f"{path}: line {line_no}: {len(cells)} cells for {len(header)} columns; "
                                   f"give every row one cell per column (quote cells that hold a comma)")
            image = cells[image_column].strip()
            if not image:
                raise DatasetError(f"{path}: line {line_no}: the image cell is empty; give the image's path "
                                   f"relative to --data")
            if image in first_line:
                raise DatasetError(f"{path}: line {line_no}: image {image!r} is repeated (first on line "
                                   f"{first_line[image]}); merge its labels into one row")
            first_line[image] = line_no
            if layout == "wide":
                pos, neg = _wide_row(path, line_no, header, cells, wide_columns)
            else:
                try:
                    pos = [column_of[name] for name in _names(cells[pos_column])]
                    neg = [column_of[name] for name in _names(cells[neg_column])]
                except KeyError as error:
                    raise DatasetError(f"{path}: line {line_no}: unknown class {error.args[0]!r}, not among "
                                       f"{known}; fix the name or add the class to {CLASSES_FILE}") from None
                both = set(pos).intersection(neg)
                if both:
                    raise DatasetError(f"{path}: line {line_no}: class {class_names[min(both)]!r} is listed "
                                       f"as both positive and negative; keep it in one of the two lists")
            images.append(image)
            lines.append(line_no)
            pos_ids.extend(sorted(pos))
            neg_ids.extend(sorted(neg))
            pos_counts.append(len(pos))
            neg_counts.append(len(neg))
    csr = []
    for ids, counts in ((pos_ids, pos_counts), (neg_ids, neg_counts)):
        indptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(np.asarray(counts, dtype=np.int64), out=indptr[1:])
        csr += [indptr, np.asarray(ids, dtype=np.int32)]
    labels = LabelMatrix.from_csr(*csr, len(class_names), validate=False)
    return images, np.asarray(lines, dtype=np.int64), labels, layout


def _wide_row(path: str, line_no: int, header: list[str], cells: list[str], columns) -> tuple[list, list]:
    pos, neg = [], []
    for i, c in columns:
        value = _WIDE_VALUES.get(cells[i].strip())
        if value is None:
            raise DatasetError(f"{path}: line {line_no}, column {header[i]!r}: value {cells[i]!r} is not 1 "
                               f"(present), 0 (absent), -1 or empty (not annotated); fix the cell")
        if value == 1:
            pos.append(c)
        elif value == 0:
            neg.append(c)
    return pos, neg


def find_split_csv(split: str, data: str, metadata: str | None) -> str:
    """``{split}.csv`` (val: val.csv, else test.csv) from the first of ``metadata``, ``data`` holding one."""
    folders = list(dict.fromkeys(f for f in (metadata, data) if f))
    for folder in folders:
        for name in SPLIT_FILES[split]:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    raise DatasetError(f"CSV {split} labels not found: looked for {' or '.join(SPLIT_FILES[split])} in "
                       f"{' and '.join(folders)}. Pass --metadata DIR, the folder holding train.csv and "
                       f"val.csv (default: --data), and --data, the image root; see docs/your_data.md")


class CsvDataset(MultiLabelImageDataset):
    """A split of a CSV dataset; images at ``{root}/{image}``."""

    def __init__(self, root: str, csv_path: str, class_names: list[str], transform=None,
                 target_transform=None, skip_bad_images: bool = False):
        if not os.path.isdir(root):
            raise DatasetError(f"CSV image root not found: {root}. Pass the folder that the image column of "
                               f"{csv_path} is relative to as --data")
        self.root = root
        self.csv_path = csv_path
        self.class_names = list(class_names)
        self.transform = transform
        self.target_transform = target_transform
        images, lines, self.labels, self.layout = read_csv_labels(csv_path, self.class_names)
        self.image_ids = np.array([image.encode("utf-8") for image in images], dtype=bytes)
        self.image_paths = PathSequence(root, self.image_ids)
        try:
            self._finish_init(csv_path, skip_bad_images)
        except DatasetError:
            missing = [r for r in range(len(images)) if not os.path.isfile(self.image_paths[r])]
            if not missing:
                raise
            first = missing[0]
            raise DatasetError(f"{csv_path}: line {lines[first]}: image {images[first]!r} not found under "
                               f"--data {root} ({len(missing)} of {len(images)} images missing). Fix the "
                               f"path or --data, or pass --skip_bad_images to train without them") from None
        pos, neg = int(self.labels.positive_counts().sum()), int(self.labels.negative_counts().sum())
        self.load_stats = {"images": len(self), "positive_labels": pos, "negative_labels": neg}

    def describe_load_stats(self) -> str:
        """The labels as read from the file (a later simulation does not change this line)."""
        images, pos, neg = (self.load_stats[key] for key in ("images", "positive_labels", "negative_labels"))
        unknown = 100 * (1 - (pos + neg) / max(images * self.num_classes, 1))
        return (f"{self.label_source}: {images} images x {self.num_classes} classes ({self.layout} "
                f"layout): {pos} positive, {neg} negative labels, {unknown:.1f}% not annotated")


def csv_dataset(split: str, transform=None, *, data: str, metadata: str | None = None,
                skip_bad_images: bool = False) -> CsvDataset:
    csv_path = find_split_csv(split, data, metadata)
    names = csv_class_names(os.path.dirname(csv_path))
    return CsvDataset(data, csv_path, names, transform=transform, skip_bad_images=skip_bad_images)


def write_csv_labels(path: str, images: list[str], labels: np.ndarray, class_names: list[str],
                     layout: str = "lists") -> None:
    """Write (N, C) labels of 1 / 0 / -1 for ``images`` (paths relative to the image root) in ``layout``."""
    if layout not in CSV_LAYOUTS:
        raise ValueError(f"layout must be one of {CSV_LAYOUTS}, got {layout!r}")
    if layout == "lists" and any(";" in name for name in class_names):
        raise ValueError("a class name holds ';', the lists layout's separator; use the wide layout")
    labels = np.asarray(labels)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if layout == "wide":
            writer.writerow(["image", *class_names])
            for image, row in zip(images, labels):
                writer.writerow([image, *(str(int(v)) for v in row)])
            return
        writer.writerow(LIST_COLUMNS)
        for image, row in zip(images, labels):
            writer.writerow([image, ";".join(class_names[c] for c in np.flatnonzero(row == 1)),
                             ";".join(class_names[c] for c in np.flatnonzero(row == 0))])
