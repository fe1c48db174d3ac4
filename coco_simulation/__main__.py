"""Command line: simulate partial labels on the COCO train annotations and write them to a file.

    python -m coco_simulation --data DIR [--metadata DIR] --simulate_partial_type fpc \
        --simulate_partial_param 1000 --seed 0 --out partial.npz [--plot class_freq.png | --plot none]

Reads the train split through the same loader and the same two layouts as training (``--data DIR``
with ``annotations/instances_train2014.json`` and ``train2014/``, or the paper code's ``--metadata
DIR`` with ``train.json``), writes the simulated matrix (see `src.data.partial_labels` for the file
format; pass it to training with ``--partial_labels FILE``), prints per-class statistics and saves
the class-frequency plot (original vs simulated positives per class; default: the --out path with
.png instead of .npz; ``--plot none`` skips it).
"""

from __future__ import annotations

import argparse
import os
import sys

from coco_simulation.plot import plot_class_frequencies
from coco_simulation.simulate import (
    SIMULATION_MODES,
    canonical_mode,
    class_statistics,
    format_class_statistics,
    save_partial_labels,
    simulate_partial_labels,
)
from src.data import build_split
from src.utils.cli import run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coco_simulation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="COCO root (annotations/, train2014/) or image folder")
    parser.add_argument("--metadata", default=None, help="folder with train.json (the paper code's layout)")
    parser.add_argument("--simulate_partial_type", default="fpc", choices=SIMULATION_MODES)
    parser.add_argument(
        "--simulate_partial_param",
        type=float,
        default=1000,
        help="fpc: samples kept per class; rps: removal probability; known_ratio: kept fraction",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--plot", default=None,
                        help="PNG of the class frequencies (default: --out with .png; 'none' to skip)")
    parser.add_argument(
        "--skip_bad_images",
        action="store_true",
        help="drop missing/undecodable images first (training must then use it too)",
    )
    args = parser.parse_args(argv)
    if args.plot is None:
        args.plot = os.path.splitext(args.out)[0] + ".png"
    elif args.plot.strip().lower() == "none":
        args.plot = None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dataset = build_split("coco", "train", data=args.data, metadata=args.metadata,
                          skip_bad_images=args.skip_bad_images)
    ann_file = dataset.ann_file
    original = dataset.labels.to_dense()
    simulated = simulate_partial_labels(
        original, args.simulate_partial_type, args.simulate_partial_param, args.seed
    )
    meta = {
        "mode": canonical_mode(args.simulate_partial_type),
        "param": args.simulate_partial_param,
        "seed": args.seed,
        "annotation_file": ann_file,
        "skip_bad_images": args.skip_bad_images,
    }
    save_partial_labels(args.out, simulated, dataset.class_names, list(dataset.ids), meta,
                        full_labels=original)
    stats = class_statistics(original, simulated)
    print(f"{ann_file}: mode {meta['mode']}, param {args.simulate_partial_param:g}, seed {args.seed}")
    print(format_class_statistics(stats, dataset.class_names))
    print(f"wrote {args.out}")
    if args.plot:
        title = f"{meta['mode']} {args.simulate_partial_param:g} (seed {args.seed})"
        plot_class_frequencies(
            stats.original_positive, stats.kept_positive, args.plot, dataset.class_names, title
        )
        print(f"wrote {args.plot}")
    return 0


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
