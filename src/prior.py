"""Class-prior estimation for CSL's selective mode, and how well an estimate ranks the classes.

The prior of class c is the fraction of training images that contain it, P(c). CSL estimates it from
the stage-1 model (trained with ``--partial_loss_mode ignore``) as the mean predicted probability
over the training images::

    prior[c] = (1 / N) * sum_i sigmoid(model(x_i))[c]

computed here in one clean pass: eval mode (frozen batch-norm statistics, no dropout) and the
validation transform (resize + ToTensor, no augmentation), so the estimate does not depend on the
random crops of the last epoch. This differs from the paper code, which averages the predictions of
the training batches while the model is still changing (that running average is still available as
``ComputePrior`` in ``src.loss_functions.partial_asymmetric_loss``). With torch.distributed
initialised every rank predicts a disjoint contiguous shard (no padding) and the per-class sums and
the image count are all-reduced, so the result equals the single-process one;
only C sums travel, never the N x C predictions (OpenImages: 9,605 classes x millions of images).

The output file is the paper's format, ``Classes,avg_pred`` (one row per class, in model order). Its
default location is next to the checkpoint, named after the labels, the checkpoint and the weights
(``outputs/stage1/prior_fpc_1000_best.csv``, ``..._last_ema.csv``), so it never replaces the prior
train.py wrote (``<path_dest>/priors/prior_fpc_1000.csv``) nor that of another checkpoint.

Ranking quality. When the full labels are known (COCO with simulated partial labels, the embedded
dataset), the true frequency of class c is ``#positives / N`` over the full labels. An estimate is
judged by Spearman's rank correlation with it (Pearson correlation of the two rank vectors, ties
receiving the average of the ranks they span, as ``scipy.stats.spearmanr``) and by its top-10 list,
the paper's "Estimating the Class Distribution" table. Two naive estimates from the partial
annotations are reported alongside:

* ``naive (pos / N)``: annotated positives / number of images - the paper's "count the positive
  annotations" baseline; rank-equivalent to the raw count.
* ``naive (pos / annotated)``: positives among the images annotated for the class. Unbiased when the
  annotated images of a class are a uniform sample, biased when annotation favours positives.

Command line (see ``--help``)::

    python -m src.prior --model_path outputs/stage1/best.pth --data data/embedded \
        --simulate_partial_type fpc --simulate_partial_param 1000 --image-size 224 \
        --out outputs/priors/prior_fpc_1000.csv --compare outputs/priors/negative_mode.csv
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


# --------------------------------------------------------------------------- rank statistics
def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values`` (ascending); tied values share the mean of the ranks they span."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(x).any():
        raise ValueError("average_ranks: values contain NaN; a prior or frequency vector must be finite")
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts_group = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group_of_sorted = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.r_[starts[1:], len(x)]  # exclusive
    mean_rank = (starts + ends - 1) / 2.0 + 1.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty_like(x)
    ranks[order] = mean_rank[group_of_sorted]
    return ranks


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
    """The two count-based estimates of the module docstring from a LabelMatrix of partial labels."""
    positives = labels.positive_counts().astype(np.float64)
    annotated = labels.annotated_counts().astype(np.float64)
    per_annotated = np.divide(positives, annotated, out=np.zeros_like(positives), where=annotated > 0)
    return {"naive (pos / N)": positives / max(labels.num_samples, 1),
            "naive (pos / annotated)": per_annotated}


def rank_statistics(true_freq, estimates: Mapping[str, np.ndarray], class_names: Sequence[str],
                    top: int = 10) -> dict[str, dict]:
    """Per estimate: Spearman rho vs the true frequencies, its top list, and the overlap with the true top.

    The first entry is the true frequency itself (rho 1, full overlap) so tables show the reference.
    """
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
    """Markdown table: one column per estimate (true frequency first), rows = top-k classes with values,
    then Spearman rho and the top-k overlap with the true list. ``statistics``: the result of
    `rank_statistics` for the same arguments, when the caller already has it (computed otherwise)."""
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


# --------------------------------------------------------------------------- the clean pass
def eval_view(dataset, transform):
    """A shallow copy of ``dataset`` (same images and labels) that applies ``transform`` instead."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


@torch.no_grad()
def compute_prior_from_model(model: torch.nn.Module, dataset: Dataset, device, batch_size: int = 64,
                             workers: int = 0, amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Mean sigmoid prediction per class over ``dataset`` (pass it with the eval transform; see
    `eval_view`), float32 (C,); the model's train/eval mode is restored afterwards.

    The batches come from `src.engine.iter_logits`, the prediction loop of validation (unwrapped model,
    eval mode, channels_last input for a channels_last model). Distributed: each rank predicts its
    contiguous, batch-aligned shard (`src.engine.build_eval_loader`, no padding) and the sums are
    all-reduced (`ComputePrior.all_reduce`), so every rank returns the mean over all images, each
    counted once."""
    from src.engine import build_eval_loader, iter_logits, num_classes_of
    from src.loss_functions.partial_asymmetric_loss import ComputePrior

    if len(dataset) == 0:
        raise ValueError("compute_prior_from_model: the dataset is empty; check --data and the split")
    device = torch.device(device)
    loader = build_eval_loader(dataset, batch_size, workers, device)
    class_names = getattr(dataset, "class_names", None)
    if not class_names:  # the class count as src.engine.predict gets it: dataset, else model
        class_names = [str(c) for c in range(num_classes_of(loader, model))]
    accumulator = ComputePrior(class_names)
    with contextlib.closing(iter_logits(model, loader, device, amp_dtype)) as batches:
        for logits, _ in batches:
            accumulator.update(logits)
    accumulator.all_reduce()
    return accumulator.avg_pred_train.cpu().numpy().astype(np.float32)


def write_prior_csv(path: str, class_names: Sequence[str], values) -> str:
    """Write the paper's ``Classes,avg_pred`` file atomically (`src.utils.checkpoint.atomic_write_text`:
    temp file + rename, the folder created); returns the path. The one writer of the format (also
    behind ``ComputePrior.save_prior``)."""
    import pandas as pd

    from src.loss_functions.partial_asymmetric_loss import PRIOR_CSV_COLUMNS
    from src.utils.checkpoint import atomic_write_text

    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) != len(class_names):
        raise ValueError(f"write_prior_csv: {len(values)} values for {len(class_names)} classes ({path})")
    frame = pd.DataFrame({PRIOR_CSV_COLUMNS[0]: [str(n) for n in class_names], PRIOR_CSV_COLUMNS[1]: values})
    # newline="": the line endings pandas writes (os.linesep) go to the file unchanged, as with to_csv(path).
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.8g"), newline="")
    return path


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from src.args import add_decode_flags, add_flag, add_openimages_flags, non_negative_int, positive_int

    parser = argparse.ArgumentParser(
        prog="python -m src.prior",
        description="Estimate the class prior (Classes,avg_pred) with a clean eval-mode pass of a model over "
                    "the training images; with full labels known (coco/embedded) also report how well it "
                    "ranks the classes (Spearman, top-10) next to the naive counts and --compare files.")
    add_flag(parser, "--model_path", type=str, required=True,
             help="checkpoint: ours (train.py best.pth/last.pth) or the paper's")
    add_flag(parser, "--model_name", type=str, default=None,
             help="architecture; default: stored in the checkpoint or inferred from TResNet tensor shapes")
    add_flag(parser, "--use_ema", action="store_true", help="use the EMA weights stored in our checkpoint")
    add_flag(parser, "--data", metavar="DIR", type=str, default="./data", help="dataset folder (as train.py)")
    add_flag(parser, "--metadata", type=str, default="./data/COCO_2014",
             help="annotation folder of the paper's layout / OpenImages / LVIS (as train.py)")
    add_flag(parser, "--dataset_type", type=str, choices=("coco", "openimages", "lvis"), default="coco",
             help="dataset reader; the embedded dataset uses coco")
    add_flag(parser, "--partial_labels", type=str, default=None, metavar="FILE",
             help="partial labels of the train set saved by 'python -m coco_simulation' (.npz)")
    add_flag(parser, "--simulate_partial_type", type=str, default=None,
             help="simulate partial labels on the fly: fpc or rps (as train.py)")
    add_flag(parser, "--simulate_partial_param", type=float, default=1000,
             help="annotations per class (fpc) or annotated fraction (rps)")
    add_flag(parser, "--seed", type=int, default=0, help="seed of the simulation (as the training run)")
    add_flag(parser, "--image-size", type=positive_int, default=448, metavar="N", help="input image size")
    add_flag(parser, "-b", "--batch-size", type=positive_int, default=64, metavar="N", help="batch size")
    add_flag(parser, "-j", "--workers", type=non_negative_int, default=8, metavar="N",
             help="data loading workers")
    add_flag(parser, "--skip_bad_images", action="store_true", help="drop unreadable images at start-up")
    add_decode_flags(parser)
    add_openimages_flags(parser)
    add_flag(parser, "--out", type=str, default=None,
             help="output CSV; default next to the checkpoint: <checkpoint folder>/prior_<simulation or "
                  "dataset>_<checkpoint name>[_ema].csv (train.py's own prior is in <path_dest>/priors/)")
    add_flag(parser, "--compare", type=str, nargs="+", default=[], metavar="CSV",
             help="other prior files (Classes,avg_pred) to rank next to this estimate")
    add_flag(parser, "--top", type=positive_int, default=10, help="length of the top lists")
    add_flag(parser, "--device", type=str, default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    add_flag(parser, "--amp", action=argparse.BooleanOptionalAction, default=None,
             help="autocast (default: on for CUDA, off on CPU)")
    add_flag(parser, "--amp_dtype", type=str, choices=("float16", "bfloat16"), default="float16",
             help="autocast dtype with --amp")
    return parser


def _default_out(args) -> str:
    """<checkpoint folder>/prior_<labels>_<checkpoint name>[_ema].csv: one file per checkpoint and weights
    (best / last, EMA or not), never train.py's <path_dest>/priors/prior_<labels>.csv."""
    if args.partial_labels:
        stem = os.path.splitext(os.path.basename(args.partial_labels))[0]
    elif args.simulate_partial_type:
        stem = f"{args.simulate_partial_type}_{args.simulate_partial_param:g}"
    else:
        stem = args.dataset_type
    checkpoint = os.path.splitext(os.path.basename(args.model_path))[0] + ("_ema" if args.use_ema else "")
    return os.path.join(os.path.dirname(args.model_path), f"prior_{stem}_{checkpoint}.csv")


def _load_train_sets(args):
    """(train set with the eval transform and the partial labels, full labels or None). Full labels are
    known for coco (also the embedded dataset): the annotation file is complete and the partial labels
    are simulated from it. Only the train split is read (build_datasets would also read the val split)."""
    from src.data import apply_partial_labels, build_split
    from src.data.transforms import build_val_transform

    train_full = build_split(args, args.dataset_type, "train",
                             build_val_transform(args.image_size, draft=args.jpeg_draft))
    # The partial labels replace the copy's label matrix (set_labels), the original keeps the full one.
    train_partial = apply_partial_labels(args, copy.copy(train_full))
    return train_partial, (train_full.labels if args.dataset_type == "coco" else None)


def _check_out_path(path: str) -> None:
    """Before any work: a .csv file path whose folder exists or can be created (created here)."""
    from src.args import prepare_output_file

    if not os.path.isdir(path) and not path.lower().endswith(".csv"):
        raise ValueError(f"--out: {path!r} should be a .csv file (the prior format is Classes,avg_pred)")
    prepare_output_file(path, "--out", example="prior.csv")


def main(argv=None) -> dict:
    """Run the command; returns {'path', 'prior', 'class_names', 'report', 'statistics'} (the last two
    None without full labels, and on ranks other than 0)."""
    from src.engine import load_eval_model
    from src.loss_functions.partial_asymmetric_loss import read_prior_csv
    from src.models import check_model_classes
    from src.utils.distributed import cleanup_distributed, init_distributed

    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.model_path):
        raise FileNotFoundError(f"--model_path: checkpoint {args.model_path!r} does not exist; pass the "
                                "stage-1 model (e.g. <path_dest>/best.pth)")
    for path in args.compare:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--compare: prior file {path!r} does not exist")
    args.out = args.out or _default_out(args)
    _check_out_path(args.out)  # before any work: a bad --out fails now, not after the pass
    ctx = init_distributed(args.device)
    try:
        model, model_classes, amp_dtype = load_eval_model(args, ctx.device)
        train_set, full_labels = _load_train_sets(args)
        class_names = list(train_set.class_names)
        check_model_classes(model_classes, class_names,
                            f"the {args.dataset_type} training set at {args.data}", verbose=ctx.is_main)
        # Keyed by the path as given: r1/prior.csv and r2/prior.csv are two columns, not one.
        compares = {p: read_prior_csv(p, class_names).numpy() for p in args.compare}
        prior = compute_prior_from_model(model, train_set, ctx.device, batch_size=args.batch_size,
                                         workers=args.workers, amp_dtype=amp_dtype)
        report = statistics = None
        if ctx.is_main:
            write_prior_csv(args.out, class_names, prior)
            print(f"class prior written to {args.out} ({len(train_set)} training images, eval mode, "
                  f"no augmentation)")
            estimates = {"this estimate": prior, **naive_estimates(train_set.labels), **compares}
            if full_labels is not None:
                true_freq = full_labels.positive_counts() / full_labels.num_samples
                statistics = rank_statistics(true_freq, estimates, class_names, args.top)
                report = rank_report(true_freq, estimates, class_names, args.top, statistics=statistics)
                print("\nEstimating the class distribution (true frequency = positives / N over the full "
                      "labels):\n" + report)
            else:
                print(f"\nfull labels of {args.dataset_type} are unknown: no ranking against the truth. Top "
                      f"{args.top}:")
                for name, values in estimates.items():
                    print(f"  {name}: {', '.join(top_classes(values, class_names, args.top))}")
        return {"path": args.out, "prior": prior, "class_names": class_names, "report": report,
                "statistics": statistics}
    finally:
        cleanup_distributed()


def cli(argv=None) -> int:
    from src.utils.cli import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
