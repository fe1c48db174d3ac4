"""Partial-label asymmetric loss with class-aware selective handling (CSL) and the class prior.

Targets hold, per (image, class), 1 (positive), 0 (negative) or -1 (un-annotated). With
p = sigmoid(logit) and q = 1 - p (if clip > 0: q = min(q + clip, 1)) the loss is

    loss = -sum_{i,c} w_ic * f_ic * t_ic

    t_ic = alpha_pos   * log(max(p, 1e-8))   on positives
           alpha_neg   * log(max(q, 1e-8))   on negatives
           alpha_unann * log(max(q, 1e-8))   on un-annotated entries
    f_ic = (1 - p)^gamma_pos on positives, (1 - q)^gamma_neg on negatives,
           (1 - q)^gamma_unann on un-annotated entries      (focusing weight, no gradient)

and the mode weight w (no gradient) depends on ``partial_loss_mode``:

- ``negative``: 1 everywhere (un-annotated entries are treated as negatives);
- ``ignore``: 0 on un-annotated entries, 1 elsewhere;
- ``ignore_normalize_classes``: 0 on un-annotated entries and 1 + 1 / (1 + n_annotated(sample))
  elsewhere (Durand et al. 2019, alpha = beta = 1);
- ``selective`` (CSL): 1, then 0 on the un-annotated entries of every class whose prior exceeds
  ``prior_threshold`` (when a prior is loaded and the threshold is non-zero), then 0 on the
  k = int(likelihood_topk * batch_size) un-annotated entries of the whole batch with the highest p
  (counted over all un-annotated entries, including those the prior already zeroed; all of them
  when there are fewer than k). Ties at the k-th probability are broken arbitrarily.

The selection uses ``torch.topk`` over p with annotated entries masked below every probability, so a
128 x 9,605 batch never sorts its 1.2 M entries. Everything is computed in float32, also under
autocast.

The prior file is a CSV with header ``Classes,avg_pred``: one row per class with the mean predicted
probability of that class (written by :class:`ComputePrior`).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

PARTIAL_LOSS_MODES = ("negative", "ignore", "ignore_normalize_classes", "selective")
PROBABILITY_FLOOR = 1e-8
PRIOR_CSV_COLUMNS = ("Classes", "avg_pred")

# Defaults of the paper's train.py flags.
LOSS_DEFAULTS = {
    "clip": 0.0,
    "gamma_pos": 0.0,
    "gamma_neg": 1.0,
    "gamma_unann": 2.0,
    "alpha_pos": 1.0,
    "alpha_neg": 1.0,
    "alpha_unann": 1.0,
    "partial_loss_mode": "negative",
    "likelihood_topk": 5,
    "prior_path": None,
    "prior_threshold": 0.05,
}


def _format_names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _drop_trailing_stray_rows(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Drop rows at the end of the file that have an empty avg_pred field, with a warning.

    The paper's published ``outputs/priors/prior_fpc_1000.csv`` ends with a stray line holding a
    bare number (``1542867``) and no second field; reading that file must keep working.
    """
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
    """Read a ``Classes,avg_pred`` prior CSV into a float32 tensor (one value per class).

    With ``class_names`` the rows are matched by name and returned in that order; every class must
    appear exactly once and the file must hold no other class. Without it the file order is kept.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"prior file {str(path)!r} (--prior_path) does not exist; compute one with ComputePrior / "
            "src/prior.py, or omit --prior_path (or pass --prior_path none) to train without a prior"
        )
    try:
        # Class names are strings; keep_default_na=False keeps names such as "None" or "NA" intact.
        frame = pd.read_csv(path, dtype={PRIOR_CSV_COLUMNS[0]: str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"prior file {str(path)!r} is not a readable CSV: {err}") from err
    missing_columns = [column for column in PRIOR_CSV_COLUMNS if column not in frame.columns]
    if missing_columns:
        raise ValueError(
            f"prior file {str(path)!r} lacks column(s) {missing_columns}; expected header "
            f"'{','.join(PRIOR_CSV_COLUMNS)}', found {list(frame.columns)}"
        )
    frame = _drop_trailing_stray_rows(frame, path)
    names = [str(name) for name in frame[PRIOR_CSV_COLUMNS[0]]]
    values = pd.to_numeric(frame[PRIOR_CSV_COLUMNS[1]], errors="coerce").to_numpy(dtype=np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
    if bad_rows.size:
        row = int(bad_rows[0])
        raise ValueError(
            f"prior file {str(path)!r}: column avg_pred must hold probabilities in [0, 1]; row {row + 2} "
            f"(class {names[row]!r}) holds {frame[PRIOR_CSV_COLUMNS[1]].iloc[row]!r} "
            f"({bad_rows.size} bad row(s) in all)"
        )
    duplicates = sorted(pd.Series(names)[pd.Series(names).duplicated()].unique())
    if duplicates:
        raise ValueError(
            f"prior file {str(path)!r} lists class(es) more than once: {_format_names(duplicates)}"
        )
    if class_names is None:
        return torch.tensor(values, dtype=torch.float32)
    wanted = [str(name) for name in class_names]
    row_of = {name: row for row, name in enumerate(names)}
    missing = [name for name in wanted if name not in row_of]
    wanted_set = set(wanted)
    unknown = [name for name in names if name not in wanted_set]
    if missing or unknown:
        raise ValueError(
            f"prior file {str(path)!r} does not match the model's classes: missing {len(missing)} "
            f"[{_format_names(missing)}], unknown {len(unknown)} [{_format_names(unknown)}]; "
            "recompute the prior for this dataset or pass the prior file made for it"
        )
    return torch.tensor(values[[row_of[name] for name in wanted]], dtype=torch.float32)


def _resolve_settings(args: argparse.Namespace | None, kwargs: dict) -> dict:
    """Defaults, overridden by the Namespace's fields, overridden by keyword arguments."""
    unknown = sorted(set(kwargs) - set(LOSS_DEFAULTS))
    if unknown:
        raise TypeError(
            f"PartialSelectiveLoss got unknown keyword argument(s) {unknown}; valid: {sorted(LOSS_DEFAULTS)}"
        )
    settings = {name: getattr(args, name, default) for name, default in LOSS_DEFAULTS.items()}
    settings.update(kwargs)
    if settings["partial_loss_mode"] is None:  # the paper's code treats None as 'negative'
        settings["partial_loss_mode"] = "negative"
    if settings["partial_loss_mode"] not in PARTIAL_LOSS_MODES:
        raise ValueError(
            f"partial_loss_mode {settings['partial_loss_mode']!r} is not supported; "
            f"choose one of {list(PARTIAL_LOSS_MODES)}"
        )
    if settings["clip"] is None:
        settings["clip"] = 0.0
    for name in ("clip", "gamma_pos", "gamma_neg", "gamma_unann", "likelihood_topk", "prior_threshold"):
        if float(settings[name]) < 0:
            raise ValueError(f"{name} must be >= 0, got {settings[name]!r}")
    if float(settings["clip"]) >= 1:
        raise ValueError(f"clip must be in [0, 1), got {settings['clip']!r}")
    return settings


class PartialSelectiveLoss(nn.Module):
    """Partial-label asymmetric loss (see the module docstring for the exact formula).

    Build it from train.py's Namespace, ``PartialSelectiveLoss(args)``, or from keyword arguments of
    the same names; keyword arguments override the Namespace. ``class_names`` (or ``num_classes``)
    lets the prior file be checked at construction; without them its row count is checked against
    the logits at the first forward.
    """

    def __init__(
        self,
        args: argparse.Namespace | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        **kwargs,
    ):
        super().__init__()
        settings = _resolve_settings(args, kwargs)
        self.clip = float(settings["clip"])
        self.gamma_pos = float(settings["gamma_pos"])
        self.gamma_neg = float(settings["gamma_neg"])
        self.gamma_unann = float(settings["gamma_unann"])
        self.alpha_pos = float(settings["alpha_pos"])
        self.alpha_neg = float(settings["alpha_neg"])
        self.alpha_unann = float(settings["alpha_unann"])
        self.partial_loss_mode = settings["partial_loss_mode"]
        self.likelihood_topk = settings["likelihood_topk"]
        prior_path = settings["prior_path"]
        if isinstance(prior_path, str) and prior_path.strip().lower() in ("", "none"):
            prior_path = None  # `--prior_path none` on the command line, like `--model-path none`
        self.prior_path = prior_path
        self.prior_threshold = float(settings["prior_threshold"])

        if num_classes is None:
            num_classes = len(class_names) if class_names is not None else getattr(args, "num_classes", None)
        elif class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names were given")
        self.num_classes = num_classes
        prior = None
        if self.prior_path is not None:
            prior = read_prior_csv(self.prior_path, class_names)
            self._check_prior_size(prior, num_classes)
        # A buffer follows .to(device); non-persistent because the CSV is the source of truth.
        self.register_buffer("prior", prior, persistent=False)

    def _check_prior_size(self, prior: torch.Tensor, num_classes: int | None) -> None:
        if num_classes is not None and prior.numel() != num_classes:
            raise ValueError(
                f"prior file {str(self.prior_path)!r} has {prior.numel()} rows but the model has "
                f"{num_classes} classes; use the prior computed for this dataset"
            )

    def extra_repr(self) -> str:
        return (
            f"mode={self.partial_loss_mode}, clip={self.clip}, gamma(pos,neg,unann)=({self.gamma_pos}, "
            f"{self.gamma_neg}, {self.gamma_unann}), alpha(pos,neg,unann)=({self.alpha_pos}, "
            f"{self.alpha_neg}, {self.alpha_unann}), likelihood_topk={self.likelihood_topk}, "
            f"prior_path={self.prior_path}, prior_threshold={self.prior_threshold}"
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed loss of ``logits`` (N, C) against ``targets`` (N, C) in {1, 0, -1}."""
        if logits.dim() != 2 or tuple(targets.shape) != tuple(logits.shape):
            raise ValueError(
                f"logits must be (batch, classes) and targets the same shape; got logits "
                f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
            )
        if self.prior is not None and self.num_classes is None:
            self._check_prior_size(self.prior, logits.shape[1])
            self.num_classes = logits.shape[1]
        device_type = logits.device.type
        if torch.amp.is_autocast_available(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                return self._summed_loss(logits.float(), targets)
        return self._summed_loss(logits.float(), targets)

    def _summed_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positive, negative, unannotated = targets == 1, targets == 0, targets == -1
        if not bool((positive | negative | unannotated).all()):
            raise ValueError("targets must hold only 1 (positive), 0 (negative) and -1 (un-annotated)")
        probs = torch.sigmoid(logits)
        probs_neg = 1.0 - probs
        if self.clip > 0:
            probs_neg = (probs_neg + self.clip).clamp(max=1.0)
        # The likelihood of the entry's own label: p on positives, q on negatives and un-annotated.
        likelihood = torch.where(positive, probs, probs_neg)
        log_likelihood = torch.log(likelihood.clamp(min=PROBABILITY_FLOOR))
        with torch.no_grad():
            weight = self._per_label(positive, negative, self.alpha_pos, self.alpha_neg, self.alpha_unann)
            if self.gamma_pos != 0 or self.gamma_neg != 0 or self.gamma_unann != 0:
                gamma = self._per_label(positive, negative, self.gamma_pos, self.gamma_neg, self.gamma_unann)
                weight = weight * torch.pow(1.0 - likelihood, gamma)
            mode_weight = self.mode_weights(probs, unannotated)
            if mode_weight is not None:
                weight = weight * mode_weight
        return -(weight * log_likelihood).sum()

    @staticmethod
    def _per_label(positive, negative, on_positive: float, on_negative: float, on_unannotated: float):
        return torch.where(positive, on_positive, torch.where(negative, on_negative, on_unannotated))

    def mode_weights(self, probs: torch.Tensor, unannotated: torch.Tensor) -> torch.Tensor | None:
        """The mode weight w (float32, same shape as probs), or None when it is 1 everywhere."""
        with torch.no_grad():
            if self.partial_loss_mode == "negative":
                return None
            annotated = ~unannotated
            if self.partial_loss_mode == "ignore":
                return annotated.float()
            if self.partial_loss_mode == "ignore_normalize_classes":
                n_annotated = annotated.sum(dim=1, keepdim=True, dtype=probs.dtype)
                return annotated.float() * (1.0 + 1.0 / (1.0 + n_annotated))
            return self._selective_weights(probs, unannotated)

    def _selective_weights(self, probs: torch.Tensor, unannotated: torch.Tensor) -> torch.Tensor:
        if self.prior is not None and self.prior_threshold:
            if self.prior.device != probs.device:  # moved once, then kept on the logits' device
                self.prior = self.prior.to(probs.device)
            ignored_classes = self.prior > self.prior_threshold
            weights = (~(unannotated & ignored_classes.unsqueeze(0))).float()
        else:
            weights = torch.ones_like(probs)
        num_top_k = min(int(self.likelihood_topk * probs.shape[0]), probs.numel())
        if num_top_k > 0:
            # Annotated entries score -1, below every probability, so the top k are un-annotated
            # entries unless there are fewer than k of them; no host sync needed to count them.
            scores = probs.masked_fill(~unannotated, -1.0).flatten()
            top_scores, top_index = torch.topk(scores, num_top_k, sorted=False)
            flat_weights = weights.view(-1)
            flat_weights[top_index] = torch.where(top_scores >= 0, 0.0, flat_weights[top_index])
        return weights


class ComputePrior:
    """Running mean of sigmoid predictions per class, kept separately for training and validation.

    ``classes`` is a sequence of class names or a mapping whose values are the names (as in the
    paper's code). Accumulators live on the device of the logits given to :meth:`update`.
    """

    def __init__(self, classes: Sequence[str] | Mapping):
        names = list(classes.values()) if isinstance(classes, Mapping) else list(classes)
        if not names:
            raise ValueError("ComputePrior needs at least one class name")
        self.classes = [str(name) for name in names]
        self._sums = {True: None, False: None}
        self._counts = {True: 0, False: 0}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @staticmethod
    def _accumulator_dtype(device: torch.device) -> torch.dtype:
        # float64 keeps the running sums exact enough over millions of images; MPS has no float64.
        return torch.float32 if device.type == "mps" else torch.float64

    def update(self, logits: torch.Tensor, training: bool = True) -> None:
        """Add the sigmoid of ``logits`` (N, C) to the training or validation accumulator."""
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"ComputePrior.update expects logits of shape (batch, {self.num_classes}); "
                f"got {tuple(logits.shape)}"
            )
        with torch.no_grad():
            batch_sum = torch.sigmoid(logits.float()).sum(dim=0)
            total = self._sums[training]
            if total is None:
                total = torch.zeros(self.num_classes, dtype=self._accumulator_dtype(logits.device),
                                    device=logits.device)
            elif total.device != logits.device:
                total = total.to(logits.device)
            self._sums[training] = total + batch_sum.to(total.dtype)
            self._counts[training] += logits.shape[0]

    def _average(self, training: bool) -> torch.Tensor | None:
        if self._counts[training] == 0:
            return None
        return (self._sums[training] / self._counts[training]).float()

    @property
    def avg_pred_train(self) -> torch.Tensor | None:
        """Mean prediction per class over the training updates (None before the first one)."""
        return self._average(True)

    @property
    def avg_pred_val(self) -> torch.Tensor | None:
        """Mean prediction per class over the validation updates (None before the first one)."""
        return self._average(False)

    @property
    def count_train(self) -> int:
        return self._counts[True]

    @property
    def count_val(self) -> int:
        return self._counts[False]

    def save_prior(self, folder: str | Path, filename: str = "prior.csv", training: bool = True) -> Path:
        """Write ``Classes,avg_pred`` to ``folder/filename`` (folder created) and return the path; the
        file is written atomically by `src.prior.write_prior_csv`, the one writer of the format."""
        from src.prior import write_prior_csv  # here: src.prior imports this module

        if self._counts[training] == 0:
            split = "training" if training else "validation"
            raise ValueError(
                f"ComputePrior.save_prior: no {split} predictions were accumulated; call update() first"
            )
        averages = (self._sums[training] / self._counts[training]).double().cpu().numpy()
        path = Path(folder) / filename
        write_prior_csv(str(path), self.classes, averages)
        return path

    def get_top_freq_classes(
        self, k: int = 10, training: bool = True, verbose: bool = True
    ) -> list[tuple[str, float]]:
        """The k classes with the highest mean prediction, as (name, mean) pairs, highest first."""
        averages = self._average(training)
        if averages is None:
            raise ValueError(
                "ComputePrior.get_top_freq_classes: no predictions accumulated; call update() first"
            )
        values, index = torch.topk(averages.cpu(), min(k, self.num_classes))
        top = [(self.classes[i], float(v)) for v, i in zip(values.tolist(), index.tolist())]
        if verbose:
            split = "train" if training else "val"
            print(f"Prior ({split}), top {len(top)} classes: " + ", ".join(f"{n} ({v:.4f})" for n, v in top))
        return top

    def all_reduce(self) -> None:
        """Sum the accumulators over all torch.distributed ranks (no-op when not initialised).

        Call it once, after the last update of every rank: afterwards each rank holds the global
        sums, and a second call would count them again.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = next((s.device for s in self._sums.values() if s is not None), torch.device("cpu"))
        if dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        dtype = self._accumulator_dtype(device)
        zeros = torch.zeros(self.num_classes, dtype=dtype, device=device)
        packed = torch.cat([
            (self._sums[True] if self._sums[True] is not None else zeros).to(device, dtype),
            (self._sums[False] if self._sums[False] is not None else zeros).to(device, dtype),
            torch.tensor([self._counts[True], self._counts[False]], dtype=dtype, device=device),
        ])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        n = self.num_classes
        self._sums[True], self._sums[False] = packed[:n].clone(), packed[n:2 * n].clone()
        counts = packed[2 * n:].round().long().tolist()
        self._counts[True], self._counts[False] = counts[0], counts[1]
