"""Evaluate a checkpoint (the paper's or ours) on the validation set of COCO, OpenImages, LVIS or the
embedded dataset.

Metrics (all in percent; see ``src/metrics.py`` for the exact definitions):

* mAP. With full labels (COCO val, embedded) it is the paper's mAP: mean AP over all classes, a class
  without positives counting 0 (their number is printed). When the labels hold -1 (OpenImages, LVIS
  val: not every class is verified for every image) it is the partial AP: AP over annotated labels
  only, averaged over the classes that have an annotated positive and negative; the classes skipped
  are counted by reason.
* CP, CR, CF1, OP, OR, OF1 at ``--thre`` (score >= threshold) and for the top-``--top_k`` classes of
  every image (as in ASL / ML-GCN).
* LVIS: the mAP of the rare / common / frequent classes (``dataset.frequency_groups``).
* Per-class AP written to ``--output`` (CSV: class, AP, n_pos, n_neg, n_unannotated, group); by default
  next to the checkpoint, ``<checkpoint folder>/<checkpoint name>[_ema]_<dataset_type>_per_class_ap.csv``
  (so the best.pth of two runs do not share one file).

The paper's repository has no validate.py; the flags follow its train.py and ASL's validate.py
(``--thre`` default 0.8, ``-b`` 32), with both ``--snake_case`` and ``--kebab-case`` spellings.
Predictions come from ``src.engine.evaluate`` (the training loop's evaluation), so under
``torchrun --nproc_per_node N validate.py ...`` every image is evaluated exactly once.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys

import numpy as np

from src.args import (
    add_decode_flags,
    add_flag,
    add_openimages_flags,
    non_negative_int,
    positive_int,
    prepare_output_file,
)

FREQUENCY_GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a multi-label checkpoint (CSL paper or ours).")
    add_flag(parser, "--data", metavar="DIR", type=str, default="./data",
             help="dataset folder (as train.py; the embedded dataset uses the coco layout)")
    add_flag(parser, "--metadata", type=str, default="./data/COCO_2014",
             help="annotation folder of the paper's layout / OpenImages / LVIS (as train.py)")
    add_flag(parser, "--dataset_type", type=str, choices=("coco", "openimages", "lvis"), default="coco",
             help="dataset reader")
    add_flag(parser, "--model-path", type=str, required=True,
             help="checkpoint: ours (train.py best.pth / last.pth) or the paper's released .pth")
    add_flag(parser, "--model-name", type=str, default=None,
             help="architecture; default: stored in our checkpoints, inferred from the tensor shapes of "
                  "the paper's TResNets")
    add_flag(parser, "--num-classes", type=positive_int, default=None,
             help="expected number of classes (default: the checkpoint's); checked against model and data")
    add_flag(parser, "--use_ema", action="store_true", help="evaluate the EMA weights of our checkpoint")
    add_flag(parser, "--image-size", type=positive_int, default=448, metavar="N", help="input image size")
    add_flag(parser, "-b", "--batch-size", type=positive_int, default=32, metavar="N",
             help="batch size per process")
    add_flag(parser, "-j", "--workers", type=non_negative_int, default=8, metavar="N",
             help="data loading workers per process")
    add_flag(parser, "--thre", type=float, default=0.8,
             help="score threshold of CP/CR/CF1/OP/OR/OF1 (ASL's validate.py default 0.8)")
    add_flag(parser, "--top_k", type=positive_int, default=3, help="k of the top-k CP/CR/CF1/OP/OR/OF1")
    add_flag(parser, "--print-freq", "-p", type=positive_int, default=64,
             help="accepted for compatibility with ASL's validate.py; progress is shown by tqdm")
    add_flag(parser, "--output", type=str, default=None,
             help="per-class AP CSV; default next to the checkpoint: <checkpoint folder>/<checkpoint name>"
                  "[_ema]_<dataset_type>_per_class_ap.csv")
    add_flag(parser, "--skip_bad_images", action="store_true", help="drop unreadable images at start-up")
    add_decode_flags(parser)
    add_openimages_flags(parser)
    add_flag(parser, "--device", type=str, default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    add_flag(parser, "--amp", action=argparse.BooleanOptionalAction, default=None,
             help="autocast (default: on for CUDA, off on CPU)")
    add_flag(parser, "--amp_dtype", type=str, choices=("float16", "bfloat16"), default="float16",
             help="autocast dtype with --amp")
    return parser


def default_output(args) -> str:
    """Next to the checkpoint: <folder>/<checkpoint name>[_ema]_<dataset_type>_per_class_ap.csv."""
    stem = os.path.splitext(os.path.basename(args.model_path))[0] + ("_ema" if args.use_ema else "")
    return os.path.join(os.path.dirname(args.model_path), f"{stem}_{args.dataset_type}_per_class_ap.csv")


def build_val_dataset(args):
    """The validation split alone (building the train split of OpenImages would take minutes)."""
    from src.data import build_split
    from src.data.transforms import build_val_transform

    transform = build_val_transform(args.image_size, draft=args.jpeg_draft)
    return build_split(args, args.dataset_type, "val", transform)


def check_classes(model_classes: list[str], dataset_classes: list[str], args, verbose: bool = True) -> None:
    """--num-classes, model and dataset agree (see `src.models.check_model_classes` for the names; its
    note on differing names is printed only when ``verbose``, i.e. on rank 0)."""
    from src.models import check_model_classes

    if args.num_classes is not None and args.num_classes != len(model_classes):
        raise ValueError(f"--num-classes {args.num_classes} does not match the checkpoint {args.model_path}, "
                         f"whose head has {len(model_classes)} outputs; drop --num-classes or pass "
                         f"the matching checkpoint")
    check_model_classes(model_classes, dataset_classes,
                        f"the {args.dataset_type} validation set at {args.data}", verbose=verbose)


def per_class_rows(class_names, ap_per_class, targets: np.ndarray, groups=None) -> list[dict]:
    n_pos = (targets == 1).sum(axis=0)
    n_neg = (targets == 0).sum(axis=0)
    n_unann = (targets == -1).sum(axis=0)
    rows = []
    for c, name in enumerate(class_names):
        ap = float(ap_per_class[c])
        rows.append({"class": name, "AP": "" if math.isnan(ap) else f"{100.0 * ap:.4f}",
                     "n_pos": int(n_pos[c]), "n_neg": int(n_neg[c]), "n_unannotated": int(n_unann[c]),
                     "group": groups[c] if groups is not None else ""})
    return rows


def write_per_class_csv(path: str, rows: list[dict]) -> None:
    """The per-class CSV, written atomically (`src.utils.checkpoint.atomic_write_text`)."""
    from src.utils.checkpoint import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue(), newline="")  # the csv module's \r\n line ends, as before


def group_maps(ap_per_class, groups) -> dict[str, dict]:
    """mAP (percent) of each LVIS frequency group over its evaluated classes (NaN AP = skipped)."""
    ap = np.asarray(ap_per_class, dtype=np.float64)
    groups = np.asarray(groups)
    result = {}
    for key in ("r", "c", "f"):
        members = ap[groups == key]
        kept = members[~np.isnan(members)]
        result[key] = {"mAP": 100.0 * float(kept.mean()) if kept.size else float("nan"),
                       "classes": int(members.size), "evaluated": int(kept.size)}
    return result


def format_report(result: dict, topk: dict, k: int, args) -> str:
    lines = []
    if result["partial"]:
        lines.append(f"partial mAP {result['mAP']:.2f} (labels contain -1: AP over annotated labels only; "
                     f"{result['num_classes_skipped']} of {result['num_classes']} classes skipped: "
                     f"{result['skipped_no_labels']} without any annotated image, "
                     f"{result['skipped_no_positives']} without an annotated positive, "
                     f"{result['skipped_no_negatives']} without an annotated negative)")
    else:
        lines.append(f"mAP {result['mAP']:.2f} (full labels, all {result['num_classes']} classes; "
                     f"{result['classes_without_positives']} without positives count AP 0)")
    keys = ("CP", "CR", "CF1", "OP", "OR", "OF1")
    lines.append(f"threshold {args.thre:g}: " + " ".join(f"{key} {result[key]:.2f}" for key in keys))
    lines.append(f"top-{k}:        " + " ".join(f"{key} {topk[key]:.2f}" for key in keys))
    for key, group in result.get("frequency_groups", {}).items():
        lines.append(f"LVIS {FREQUENCY_GROUP_NAMES[key]:>8} ({key}): mAP {group['mAP']:.2f} over "
                     f"{group['evaluated']} of {group['classes']} classes")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Evaluate; returns the metrics dict (mAP, CP..OF1, 'top_k' dict, 'output', ...) on every rank."""
    from src.engine import build_eval_loader, evaluate, load_eval_model
    from src.metrics import topk_metrics
    from src.utils.distributed import cleanup_distributed, init_distributed

    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.model_path):
        raise FileNotFoundError(f"--model-path: checkpoint {args.model_path!r} does not exist; pass a .pth "
                                "written by train.py or a released CSL model")
    if not 0.0 <= args.thre <= 1.0:
        raise ValueError(f"--thre {args.thre} is not a probability; pass a value in [0, 1] (e.g. 0.8)")
    args.output = args.output or default_output(args)
    # Before any work: an --output that is a folder or cannot be created fails now, not after evaluating.
    prepare_output_file(args.output, "--output", example=os.path.basename(default_output(args)))
    ctx = init_distributed(args.device)
    try:
        model, model_classes, amp_dtype = load_eval_model(args, ctx.device)
        dataset = build_val_dataset(args)
        class_names = list(dataset.class_names)
        check_classes(list(model_classes), class_names, args, verbose=ctx.is_main)
        if ctx.is_main:
            print(f"evaluating {args.model_path}{' (EMA weights)' if args.use_ema else ''} on "
                  f"{len(dataset)} {args.dataset_type} validation images at {args.image_size} px")
        loader = build_eval_loader(dataset, args.batch_size, args.workers, ctx.device)
        result = evaluate(model, loader, ctx.device, amp_dtype=amp_dtype, threshold=args.thre,
                          return_predictions=True)
        preds, targets = result.pop("preds"), result.pop("targets")
        k = min(args.top_k, len(class_names))
        result["top_k"] = topk_metrics(targets, preds, k=k)
        groups = getattr(dataset, "frequency_groups", None)
        if groups is not None:
            result["frequency_groups"] = group_maps(result["ap_per_class"], groups)
        result["output"] = args.output
        if ctx.is_main:
            rows = per_class_rows(class_names, result["ap_per_class"], targets, groups)
            write_per_class_csv(args.output, rows)
            print(format_report(result, result["top_k"], k, args))
            print(f"per-class AP written to {args.output}")
        return result
    finally:
        cleanup_distributed()


def cli(argv=None) -> int:
    from src.utils.cli import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
