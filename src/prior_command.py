"""``python -m src.prior``: the clean-pass prior of a checkpoint over the training images (with their
partial labels), written as ``Classes,avg_pred`` (default ``<checkpoint folder>/prior_<labels>_<checkpoint
name>[_ema].csv``); with full labels known (coco, embedded) it also prints how well this estimate, the naive
counts and the ``--compare`` files rank the classes. Image size and architecture come from the checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

from src.args import (
    HelpFormatter,
    add_flag,
    data_parser,
    device_parser,
    eval_weights_parser,
    model_parser,
    partial_labels_parser,
    positive_int,
    require_file,
    require_weights,
    weights_output_path,
)
from src.data import apply_partial_labels, build_split_from_args, describe_simulation
from src.data.transforms import build_val_transform
from src.engine import compute_prior_from_model
from src.models import EVAL_SETTING_FLAGS, check_model_classes, load_model_for_command, weights_stem
from src.prior import (
    naive_estimates,
    prior_file_stem,
    rank_report,
    rank_statistics,
    read_prior_csv,
    top_classes,
    write_prior_csv,
)
from src.utils.amp import resolve_amp
from src.utils.cli import run_cli
from src.utils.distributed import cleanup_distributed, init_distributed
from src.utils.io import prepare_output_file, refuse_existing_file

PAPER_DEFAULTS = {"image_size": 448, "batch_size": 64}  # a checkpoint that records none


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.prior", formatter_class=HelpFormatter,
        description="Estimate the class prior (Classes,avg_pred) with a clean eval-mode pass of a model over "
                    "the training images; with full labels known (coco/embedded) also report how well it "
                    "ranks the classes (Spearman, top-10) next to the naive counts and --compare files.",
        parents=[data_parser(batch_size=64), model_parser(path_default=None, name_default=None),
                 eval_weights_parser(), device_parser(), partial_labels_parser()],
    )
    group = parser.add_argument_group("output")
    add_flag(group, "--out", type=str, default=None,
             help="output CSV; default next to the checkpoint: <checkpoint folder>/prior_<simulation or "
                  "dataset>_<checkpoint name>[_ema].csv (train.py's own prior is in <path_dest>/priors/)")
    add_flag(group, "--overwrite", action="store_true", help="replace an existing --out file")
    add_flag(group, "--compare", type=str, nargs="+", default=[], metavar="CSV",
             help="other prior files (Classes,avg_pred) to rank next to this estimate")
    add_flag(group, "--top", type=positive_int, default=10, help="length of the top lists")
    parser.set_defaults(**{attr: None for _, attr in EVAL_SETTING_FLAGS.values()})  # None: not given
    return parser


def _default_out(args) -> str:
    checkpoint = weights_stem(args.model_path) + ("_ema" if args.use_ema else "")
    return weights_output_path(args.model_path, f"{prior_file_stem(args)}_{checkpoint}.csv")


def _load_train_sets(args, verbose: bool = True):
    """(train set with partial labels, its full labels: known for coco and complete CSVs, else None)."""
    transform = build_val_transform(args.image_size, draft=args.jpeg_draft)
    train_full = build_split_from_args(args, "train", transform)
    if args.verify_images == "full":  # every image decoded now, not a failed pass later
        train_full.verify_decoding(progress=sys.stderr.isatty())
    if verbose and train_full.describe_load_stats() is not None:
        print(train_full.describe_load_stats())
    # The partial labels replace the copy's label matrix (set_labels), the original keeps the full one.
    train_partial = copy.copy(train_full)
    summary = apply_partial_labels(train_partial, partial_labels=args.partial_labels,
                                   simulate_type=args.simulate_partial_type,
                                   simulate_param=args.simulate_partial_param, seed=args.seed)
    if summary is not None and verbose:
        print(describe_simulation(args.simulate_partial_type, args.simulate_partial_param, args.seed,
                                  summary))
    full = train_full.labels  # COCO's are complete; a CSV's when it leaves no label unknown
    complete = int(full.annotated_counts().sum()) == full.num_samples * full.num_classes
    return train_partial, (full if args.dataset_type == "coco" or complete else None)


def _report(args, train_set, full_labels, class_names, prior, compares) -> tuple[str | None, dict | None]:
    estimates = {"this estimate": prior, **naive_estimates(train_set.labels), **compares}
    if full_labels is None:
        print(f"\nfull labels of {args.dataset_type} are unknown: no ranking against the truth. Top "
              f"{args.top}:")
        for name, values in estimates.items():
            print(f"  {name}: {', '.join(top_classes(values, class_names, args.top))}")
        return None, None
    true_freq = full_labels.positive_counts() / full_labels.num_samples
    statistics = rank_statistics(true_freq, estimates, class_names, args.top)
    report = rank_report(true_freq, estimates, class_names, args.top, statistics=statistics)
    print("\nEstimating the class distribution (true frequency = positives / N over the full labels):\n"
          + report)
    return report, statistics


def main(argv=None) -> dict:
    """Returns {'path', 'prior', 'class_names', 'report', 'statistics'} (the last two None without full
    labels and on ranks other than 0)."""
    args = build_parser().parse_args(argv)
    require_weights(args.model_path, "--model_path", "checkpoint",
                    "pass the stage-1 model (e.g. <path_dest>/best.pth)")
    for path in args.compare:
        require_file(path, "--compare", "prior file", "pass a Classes,avg_pred CSV")
    loaded = load_model_for_command(args, EVAL_SETTING_FLAGS, PAPER_DEFAULTS, "--model_path")
    args.out = args.out or _default_out(args)
    if not os.path.isdir(args.out) and not args.out.lower().endswith(".csv"):
        raise ValueError(f"--out: {args.out!r} should be a .csv file (the prior format is Classes,avg_pred)")
    prepare_output_file(args.out, "--out", example="prior.csv")  # before the pass: a bad --out fails now
    refuse_existing_file(args.out, "--out", args.overwrite)
    ctx = init_distributed(args.device, args.dist_timeout)
    try:
        if ctx.is_main:
            print(loaded.report())
        model = loaded.model.to(ctx.device)
        amp_dtype = resolve_amp(ctx.device, args.amp, args.amp_dtype, training=False)
        train_set, full_labels = _load_train_sets(args, verbose=ctx.is_main)
        class_names = list(train_set.class_names)
        note = check_model_classes(loaded.class_names, class_names,
                                   f"the {args.dataset_type} training set at {args.data}")
        if note and ctx.is_main:
            print(note)
        # Keyed by the path as given: r1/prior.csv and r2/prior.csv are two columns, not one.
        compares = {p: read_prior_csv(p, class_names).numpy() for p in args.compare}
        prior = compute_prior_from_model(model, train_set, ctx.device, batch_size=args.batch_size,
                                         workers=args.workers, amp_dtype=amp_dtype)
        report = statistics = None
        if ctx.is_main:
            write_prior_csv(args.out, class_names, prior)
            print(f"class prior written to {args.out} ({len(train_set)} training images, eval mode, "
                  f"no augmentation)")
            report, statistics = _report(args, train_set, full_labels, class_names, prior, compares)
        return {"path": args.out, "prior": prior, "class_names": class_names, "report": report,
                "statistics": statistics}
    finally:
        cleanup_distributed()


def cli(argv=None) -> int:
    return run_cli(main, argv)
