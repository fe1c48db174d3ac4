"""Evaluate a checkpoint (the paper's or ours) on a validation set: mAP (the partial AP when labels hold
-1), CP..OF1 at ``--thre`` and for the top ``--top_k``, LVIS frequency groups, and a per-class AP CSV
(``--output``; default next to the checkpoint, ``<name>[_ema]_<dataset_type>_per_class_ap.csv``). Image size,
architecture and classes come from the checkpoint (a paper checkpoint: 448 px). Flags as ASL's validate.py.
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
    HelpFormatter,
    add_flag,
    data_parser,
    device_parser,
    eval_weights_parser,
    model_parser,
    positive_int,
    probability,
    require_weights,
    weights_output_path,
)
from src.data import build_split_from_args
from src.data.transforms import build_val_transform
from src.engine import build_eval_loader, evaluate
from src.metrics import THRESHOLD_METRIC_KEYS, topk_metrics
from src.models import EVAL_SETTING_FLAGS, check_model_classes, load_model_for_command, weights_stem
from src.utils.amp import resolve_amp
from src.utils.cli import run_cli
from src.utils.distributed import cleanup_distributed, init_distributed
from src.utils.io import atomic_write_text, prepare_output_file

FREQUENCY_GROUP_NAMES = {"r": "rare", "c": "common", "f": "frequent"}
SETTING_FLAGS = {**EVAL_SETTING_FLAGS, "num_classes": ("--num-classes", "num_classes")}
PAPER_DEFAULTS = {"image_size": 448, "batch_size": 32}  # for a checkpoint that records no size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a multi-label checkpoint (CSL paper or ours).", formatter_class=HelpFormatter,
        parents=[data_parser(batch_size=32), model_parser(path_default=None, name_default=None),
                 eval_weights_parser(), device_parser()],
    )
    group = parser.add_argument_group("evaluation")
    add_flag(group, "--num-classes", type=positive_int, default=None,
             help="expected number of classes (default: the checkpoint's); refused when it is not")
    add_flag(group, "--thre", type=probability, default=0.8,
             help="score threshold of CP/CR/CF1/OP/OR/OF1 (ASL's validate.py default 0.8)")
    add_flag(group, "--top_k", type=positive_int, default=3, help="k of the top-k CP/CR/CF1/OP/OR/OF1")
    add_flag(group, "--print-freq", "-p", type=positive_int, default=64,
             help="accepted for compatibility with ASL's validate.py; on a terminal tqdm shows progress")
    add_flag(group, "--output", type=str, default=None,
             help="per-class AP CSV; default next to the checkpoint: <checkpoint folder>/<checkpoint name>"
                  "[_ema]_<dataset_type>_per_class_ap.csv")
    parser.set_defaults(**{attr: None for _, attr in SETTING_FLAGS.values()})  # None: not given
    return parser


def default_output(args) -> str:
    stem = weights_stem(args.model_path) + ("_ema" if args.use_ema else "")
    return weights_output_path(args.model_path, f"{stem}_{args.dataset_type}_per_class_ap.csv")


def build_val_dataset(args):
    # The validation split alone (building the train split of OpenImages would take minutes).
    dataset = build_split_from_args(args, "val", build_val_transform(args.image_size, draft=args.jpeg_draft))
    if args.verify_images == "full":  # every image decoded now, not a failed pass later
        dataset.verify_decoding(progress=sys.stderr.isatty())
    return dataset


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
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue(), newline="")  # the csv module's \r\n line ends, as before


def group_maps(ap_per_class, groups) -> dict[str, dict]:
    """mAP (percent) of each LVIS frequency group over its evaluated classes (NaN AP: skipped)."""
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
    for name, values in ((f"threshold {args.thre:g}:", result), (f"top-{k}:       ", topk)):
        lines.append(f"{name} " + " ".join(f"{key} {values[key]:.2f}" for key in THRESHOLD_METRIC_KEYS))
    for key, group in result.get("frequency_groups", {}).items():
        lines.append(f"LVIS {FREQUENCY_GROUP_NAMES[key]:>8} ({key}): mAP {group['mAP']:.2f} over "
                     f"{group['evaluated']} of {group['classes']} classes")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Returns the metrics dict (mAP, CP..OF1, 'top_k', 'output', ...) on every rank."""
    args = build_parser().parse_args(argv)
    require_weights(args.model_path, "--model-path", "checkpoint",
                    "pass a .pth written by train.py or a released CSL model")
    loaded = load_model_for_command(args, SETTING_FLAGS, PAPER_DEFAULTS)
    args.output = args.output or default_output(args)
    # Before any work: an --output that is a folder or cannot be created fails now, not after evaluating.
    prepare_output_file(args.output, "--output", example=os.path.basename(default_output(args)))
    ctx = init_distributed(args.device, args.dist_timeout)
    try:
        model = loaded.model.to(ctx.device)
        amp_dtype = resolve_amp(ctx.device, args.amp, args.amp_dtype, training=False)
        dataset = build_val_dataset(args)
        class_names = list(dataset.class_names)
        note = check_model_classes(loaded.class_names, class_names,
                                   f"the {args.dataset_type} validation set at {args.data}")
        if ctx.is_main:
            for line in (loaded.report(), dataset.describe_load_stats(), note):
                if line:
                    print(line)
            print(f"evaluating {args.model_path}{' (EMA weights)' if args.use_ema else ''} on "
                  f"{len(dataset)} {args.dataset_type} validation images at {args.image_size} px")
        loader = build_eval_loader(dataset, args.batch_size, args.workers, ctx.device)
        result = evaluate(model, loader, ctx.device, amp_dtype=amp_dtype, threshold=args.thre,
                          return_predictions=True, progress=ctx.is_main and sys.stderr.isatty())
        targets, scores = result.pop("targets"), result.pop("scores")
        k = min(args.top_k, len(class_names))
        result["top_k"] = topk_metrics(targets, scores, k=k)
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
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
