"""The prior file: the paper's ``Classes,avg_pred`` CSV, one row per class with its prior (a probability).
`write_prior_csv` is its one writer (atomic), `read_prior_csv` its one reader."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.utils.io import atomic_write_text

PRIOR_CSV_COLUMNS = ("Classes", "avg_pred")


def _format_names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _drop_trailing_stray_rows(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Drop the last rows without an avg_pred, with a warning: the paper's ``prior_fpc_1000.csv`` ends with
    a stray line holding a bare number."""
    empty = (frame[PRIOR_CSV_COLUMNS[1]].astype(str).str.strip() == "").to_numpy()
    keep = len(frame)
    while keep > 0 and empty[keep - 1]:
        keep -= 1
    if keep < len(frame):
        stray = [str(name) for name in frame[PRIOR_CSV_COLUMNS[0]].iloc[keep:]]
        warnings.warn(f"prior file {str(path)!r}: ignored {len(frame) - keep} trailing line(s) without an "
                      f"avg_pred value ({_format_names(stray)})", stacklevel=3)
    return frame.iloc[:keep]


def read_prior_csv(path: str | Path, class_names: Sequence[str] | None = None) -> torch.Tensor:
    """The priors of a ``Classes,avg_pred`` CSV, float32 (C,). With ``class_names`` the rows are matched by
    name and returned in that order (each class exactly once, no other class); else in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prior file {str(path)!r} (--prior_path) does not exist; compute one with "
                                "train.py stage 1 (--partial_loss_mode ignore) or python -m src.prior, or "
                                "omit --prior_path (or pass --prior_path none) to train without a prior")
    try:
        # Class names are strings; keep_default_na=False keeps names such as "None" or "NA" intact.
        frame = pd.read_csv(path, dtype={PRIOR_CSV_COLUMNS[0]: str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"prior file {str(path)!r} is not a readable CSV: {err}") from err
    missing_columns = [column for column in PRIOR_CSV_COLUMNS if column not in frame.columns]
    if missing_columns:
        raise ValueError(f"prior file {str(path)!r} lacks column(s) {missing_columns}; expected header "
                         f"'{','.join(PRIOR_CSV_COLUMNS)}', found {list(frame.columns)}")
    frame = _drop_trailing_stray_rows(frame, path)
    names = [str(name) for name in frame[PRIOR_CSV_COLUMNS[0]]]
    values = pd.to_numeric(frame[PRIOR_CSV_COLUMNS[1]], errors="coerce").to_numpy(dtype=np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
    if bad_rows.size:
        row = int(bad_rows[0])
        raise ValueError(f"prior file {str(path)!r}: column avg_pred must hold probabilities in [0, 1]; row "
                         f"{row + 2} (class {names[row]!r}) holds {frame[PRIOR_CSV_COLUMNS[1]].iloc[row]!r} "
                         f"({bad_rows.size} bad row(s) in all)")
    duplicates = sorted(pd.Series(names)[pd.Series(names).duplicated()].unique())
    if duplicates:
        raise ValueError(f"prior file {str(path)!r} lists class(es) more than once: "
                         f"{_format_names(duplicates)}")
    if class_names is None:
        return torch.tensor(values, dtype=torch.float32)
    wanted = [str(name) for name in class_names]
    row_of = {name: row for row, name in enumerate(names)}
    missing = [name for name in wanted if name not in row_of]
    wanted_set = set(wanted)
    unknown = [name for name in names if name not in wanted_set]
    if missing or unknown:
        raise ValueError(f"prior file {str(path)!r} does not match the model's classes: missing "
                         f"{len(missing)} [{_format_names(missing)}], unknown {len(unknown)} "
                         f"[{_format_names(unknown)}]; recompute the prior for this dataset or pass the "
                         "prior file made for it")
    return torch.tensor(values[[row_of[name] for name in wanted]], dtype=torch.float32)


def prior_file_stem(args) -> str:
    """``prior_<simulation | partial-label file | dataset>``: the name of train.py's and the command's."""
    if args.simulate_partial_type:
        return f"prior_{args.simulate_partial_type}_{args.simulate_partial_param:g}"
    if args.partial_labels:
        return f"prior_{os.path.splitext(os.path.basename(args.partial_labels))[0]}"
    return f"prior_{args.dataset_type}"


def write_prior_csv(path: str, class_names: Sequence[str], values) -> str:
    """Write ``Classes,avg_pred`` (one row per class, in the given order) atomically; returns ``path``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) != len(class_names):
        raise ValueError(f"write_prior_csv: {len(values)} values for {len(class_names)} classes ({path})")
    frame = pd.DataFrame({PRIOR_CSV_COLUMNS[0]: [str(n) for n in class_names], PRIOR_CSV_COLUMNS[1]: values})
    # newline="": the line endings pandas writes (os.linesep) go to the file unchanged, as with to_csv(path).
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.8g"), newline="")
    return path
