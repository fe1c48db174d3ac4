"""Simulate partial labels on the train labels of COCO (or another --dataset_type) and write them to a file.

    python -m coco_simulation --data DIR [--metadata DIR] --simulate_partial_type fpc \
        --simulate_partial_param 1000 --seed 0 --out partial.npz [--plot class_freq.png | --plot none]

Reads the train split as training does; train.py takes the file as ``--partial_labels FILE``.
"""

from __future__ import annotations

import argparse
import os
import sys

from coco_simulation.plot import plot_class_frequencies
from src.args import HelpFormatter, data_parser, group_of, partial_labels_parser
from src.data import build_split
from src.data.partial_labels import (
    canonical_mode,
    check_simulated,
    class_statistics,
    format_class_statistics,
    save_partial_labels,
    simulate_partial_labels,
)
from src.utils.cli import run_cli
from src.utils.io import refuse_existing_file

# train.py's flags that the simulation takes, declared once in src/args.py (help, types, defaults).
SHARED_FLAGS = ("data", "metadata", "dataset_type", "skip_bad_images", "simulate_partial_type",
                "simulate_partial_param", "seed")


def shared_flags_parser() -> argparse.ArgumentParser:
    """train.py's own declarations of `SHARED_FLAGS`, none of its other flags (they mean nothing here)."""
    parent = argparse.ArgumentParser(add_help=False)
    for source in (data_parser(), partial_labels_parser()):
        for group in source._action_groups:  # argparse's parents= copies actions the same way
            for action in group._group_actions:
                if action.dest in SHARED_FLAGS:
                    group_of(parent, group.title)._add_action(action)
    # train.py's None means "no simulation"; this command exists to simulate: FPC, the paper's first column.
    parent.set_defaults(simulate_partial_type="fpc")
    return parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coco_simulation", description=__doc__.split("\n\n")[0],
                                     parents=[shared_flags_parser()],
                                     formatter_class=HelpFormatter)
    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, help="output .npz file")
    output.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    output.add_argument("--plot", default=None,
                        help="PNG of the class frequencies (default: --out with .png; 'none' to skip)")
    args = parser.parse_args(argv)
    if args.plot is None:
        args.plot = os.path.splitext(args.out)[0] + ".png"
    elif args.plot.strip().lower() == "none":
        args.plot = None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    refuse_existing_file(args.out, "--out", args.overwrite)
    dataset = build_split(args.dataset_type, "train", data=args.data, metadata=args.metadata,
                          skip_bad_images=args.skip_bad_images)
    original = dataset.labels.to_dense()
    mode, param, seed = args.simulate_partial_type, args.simulate_partial_param, args.seed
    simulated = simulate_partial_labels(original, mode, param, seed)
    check_simulated(simulated, mode, param)
    meta = {"mode": canonical_mode(mode), "param": param, "seed": seed,
            "annotation_file": dataset.label_source, "skip_bad_images": args.skip_bad_images}
    names = dataset.class_names
    save_partial_labels(args.out, simulated, names, list(dataset.image_ids), meta, full_labels=original)
    stats = class_statistics(original, simulated)
    print(f"{dataset.label_source}: mode {meta['mode']}, param {param:g}, seed {seed}")
    print(format_class_statistics(stats, names))
    print(f"wrote {args.out}")
    if args.plot:
        title = f"{meta['mode']} {param:g} (seed {seed})"
        plot_class_frequencies(stats.original_positive, stats.kept_positive, args.plot, names, title)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
