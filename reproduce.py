"""Reproduce the paper's COCO table (FPC / RPS x Ignore / Negative / Negative-ASL / CSL) in one command.

    python reproduce.py                      # embedded dataset on CPU, 3 seeds (the README's demo)
    python reproduce.py --data /datasets/COCO_2014 --model-name tresnet_m \
        --model-path models_local/tresnet_m_miil_21k.pth --image-size 448 --device cuda
    python reproduce.py --dataset_type csv --data my_images --rows ignore_ce,negative_ce,csl  # your data
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from src.args import HelpFormatter, data_parser, device_parser, model_parser, optimisation_parser
from src.data.embedded import DESIGNS
from src.reproduce.protocols import (
    EMBEDDED_DEFAULTS,
    coco_protocol,
    csv_protocol,
    embedded_protocol,
    select_columns,
    select_rows,
    threshold_rule,
    user_train_flags,
)
from src.reproduce.report import write_reports
from src.reproduce.runner import CHILDREN, cell_environment, check_before_running, run_table
from src.reproduce.sensitivity import run_sensitivity
from src.reproduce.sweep import run_sweep
from src.utils.cli import run_cli
from src.utils.io import atomic_write_json, lock_folder, prepare_output_folder, unlock_folder

HERE = os.path.dirname(os.path.abspath(__file__))

EPILOG = (
    "The data, model, optimisation and device flags are train.py's. --data selects the protocol: without it "
    "the embedded dataset is generated under --data_root and its backbone pretrained (--metadata and "
    "--model-path apply with --data only). A flag of these groups left unset takes the protocol's value "
    "(COCO_FLAGS / EMBEDDED_FLAGS in src/reproduce/protocols.py) or train.py's default; one you set is "
    "passed to every train.py run of the table. --dataset_type coco (the default) or csv (your own data, "
    "docs/your_data.md: the COCO recipe on it; column 'given' = the CSV's labels, fpc/rps simulated on top)."
)


def train_parents() -> list[argparse.ArgumentParser]:
    # path_default: any, to keep --model-path optional (build_parser sets it to None: the protocol's)
    return [data_parser(), model_parser(path_default="none"), optimisation_parser(), device_parser()]


def train_flag_names() -> list[str]:
    return sorted(set().union(*(vars(parent.parse_args([])) for parent in train_parents())))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                     parents=train_parents(),
                                     formatter_class=HelpFormatter)
    # Unset, train.py's flags are None: the protocol's value (COCO_FLAGS / EMBEDDED_FLAGS) or train.py's
    # default (the others are passed on only when set); --device keeps 'auto', given to every cell.
    parser.set_defaults(**{name: None for name in train_flag_names() if name != "device"})
    table, csl = parser.add_argument_group("table"), parser.add_argument_group("CSL")
    embedded, output = parser.add_argument_group("embedded dataset"), parser.add_argument_group("output")
    embedded.add_argument("--data_root", default=os.path.join(HERE, "data"),
                        help="where the embedded datasets are generated")
    embedded.add_argument("--models_dir", default=os.path.join(HERE, "models_local"),
                        help="embedded: where the pretrained upstream backbone is cached")
    output.add_argument("--out", default=None, help="results folder (default outputs/reproduce_<protocol>)")
    output.add_argument("--overwrite", action="store_true",
                        help="delete and run anew the finished cells (and simulated labels) of --out whose "
                             "recorded settings differ from this run's; without it they are refused")
    table.add_argument("--seeds", type=int, default=None,
                        help="seeds per cell (partial-label draw and init); default 3, with --sweep 1")
    table.add_argument("--schemes", default=None,
                       help="columns to run: fpc, rps or both (default); with --dataset_type csv also "
                            "'given', the CSV's own labels (its default)")
    table.add_argument("--rows", default=None,
                        help="comma-separated row keys of ROWS to run (default: every row of the protocol); "
                             "CSL rows also run ignore_ce, whose prior they need")
    csl.add_argument("--prior_threshold", type=threshold_rule, default=None,
                        help="CSL threshold: a number, or 'share' (embedded default: ignore the same share "
                             "of classes as the paper's README setting does on COCO)")
    table.add_argument("--jobs", type=int, default=None,
                        help="cells run at once (default: 2 on CPU, 1 on CUDA); each uses cores/jobs threads")
    table.add_argument("--nproc_per_node", type=int, default=1, help="GPUs per cell (torchrun)")
    embedded.add_argument("--n_train", type=int, default=EMBEDDED_DEFAULTS["n_train"],
                        help="embedded: train images")
    embedded.add_argument("--n_test", type=int, default=3000, help="embedded: test images")
    embedded.add_argument("--upstream_epochs", type=int, default=8, help="embedded: backbone pretraining")
    table.add_argument("--sweep", action="store_true",
                       help="the regime sweep over model strength, label budget and class design on the "
                            "embedded set (src/reproduce/sweep.py); writes <out>/sweep.{md,json,csv,png}")
    table.add_argument("--sensitivity", action="store_true",
                       help="the benchmark's three limits (docs/regime.md, src/reproduce/sensitivity.py); "
                            "writes <out>/sensitivity.{md,json,csv}")
    embedded.add_argument("--design", choices=DESIGNS, default=EMBEDDED_DEFAULTS["design"],
                        help="embedded: the class design of the generator (src/data/embedded.py)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if (args.sweep or args.sensitivity) and args.data:
        raise ValueError("--sweep and --sensitivity run on the embedded dataset; drop --data")
    if args.sweep and args.sensitivity:
        raise ValueError("--sweep and --sensitivity are two runs; pass one of them")
    args.seeds = args.seeds or (1 if args.sweep else 3)
    name = next(n for n, on in (("csv", args.dataset_type == "csv"), ("coco", args.data),
                                ("sweep", args.sweep), ("sensitivity", args.sensitivity), ("embedded", True))
                if on)
    args.out = args.out or os.path.join(HERE, "outputs", f"reproduce_{name}")
    return args


def build_protocol(args: argparse.Namespace):
    if args.dataset_type == "csv" and not args.data:
        raise ValueError("--dataset_type csv: pass --data, the image root of your CSV dataset "
                         "(docs/your_data.md)")
    make_protocol = csv_protocol if args.dataset_type == "csv" else coco_protocol if args.data \
        else embedded_protocol
    return make_protocol(args, user_train_flags(args, train_flag_names()))


def main(argv=None) -> None:
    args = parse_args(argv)
    protocol = None if args.sweep or args.sensitivity else build_protocol(args)
    if protocol is not None:
        select_columns(protocol, args.schemes)
        protocol.rows = select_rows(protocol, args.rows)
        check_before_running(protocol)
    prepare_output_folder(args.out, "--out")
    lock_folder(args.out, "--out")
    try:
        with CHILDREN.forwarding_signals():
            run(args, protocol)
    finally:
        unlock_folder(args.out)


def run(args: argparse.Namespace, protocol) -> None:
    jobs, env = cell_environment(args.device, args.jobs)
    start = time.time()
    if args.sweep:
        print(run_sweep(args, user_train_flags(args, train_flag_names()), args.seeds, jobs, env))
        written = "sweep.{md,json,csv,png}"
    elif args.sensitivity:
        print(run_sensitivity(args, user_train_flags(args, train_flag_names()), jobs, env))
        written = "sensitivity.{md,json,csv}"
    else:
        atomic_write_json(os.path.join(args.out, "protocol.json"),
                          {"argv": sys.argv, "args": vars(args), "protocol": protocol.__dict__})
        results = run_table(args, protocol, args.seeds, jobs, env)
        print("\n" + write_reports(args.out, protocol, results, args.seeds))
        written = "results.{json,csv,md,png}"
    print(f"written: {args.out}/{written}; total time {time.time() - start:.0f} s")


def cli(argv=None) -> int:
    """A user error exits 2 ('reproduce.py: error: ...'); a failed cell exits 1 with its log's tail."""
    return run_cli(main, argv, prog="reproduce.py")


if __name__ == "__main__":
    sys.exit(cli())
