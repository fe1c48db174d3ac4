"""What reproduce.py runs: the table's rows (``ROWS``: extend it to add baselines), the paper's numbers, the
two protocols, the CSL threshold rule."""

from __future__ import annotations

import argparse
import functools
import math
import os
from dataclasses import dataclass, field

import numpy as np

from src.data import build_split
from src.data.csv_dataset import CLASSES_FILE, find_split_csv
from src.data.embedded import class_names, dataset_config
from src.loss_functions import LOSS_HYPERPARAMETERS, LOSS_MODES, PEER_MODES
from src.prior import read_prior_csv
from src.reproduce.identity import file_hash, run_settings, settings_identity

# CSL's flags per column from the paper's README, the runnable statement (its table labels such as
# P-ASL(4,3,1) read like gamma_pos 1, where the README passes 0).
CE_GAMMAS = {"gamma_pos": 0, "gamma_neg": 0, "gamma_unann": 0}
CSL_FLAGS = {"partial_loss_mode": "selective", "likelihood_topk": 5, "gamma_pos": 0, "gamma_unann": 4}
CSL_COLUMNS = {"fpc": {"gamma_neg": 3}, "rps": {"gamma_neg": 1}}
ASL_FLAGS = {"partial_loss_mode": "negative", "gamma_pos": 1, "gamma_neg": 4, "gamma_unann": 4}

# COCO 2014's train set and the paper's FPC column: 1,000 annotations per class out of 82,081 images.
COCO_TRAIN_IMAGES = 82081
COCO_FPC_PARAM = 1000
COCO_COLUMNS = {"fpc": COCO_FPC_PARAM, "rps": 0.5}  # the paper's two simulation schemes
GIVEN_SCHEME = "given"  # --dataset_type csv: the CSV's own labels, nothing simulated


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    flags: dict
    column_flags: dict = field(default_factory=dict)  # scheme -> extra flags for that column only
    needs_prior: bool = False  # takes the prior written by the Ignore run of the same labels
    writes_prior: bool = False  # estimates a prior at the end (stage 1, and the prior table)
    prior_threshold: float | None = None  # overrides the protocol's threshold rule for this row
    protocols: tuple = ("embedded", "coco")  # the protocols that run this row
    # A row differing from it only in prior_threshold, reused when both ignore the same classes.
    same_run_as: str | None = None
    full_labels: bool = False  # trained on the full labels: one run per seed, the ceiling of every column
    default: bool = True  # in the table when --rows is not given (the ablation and peer rows are opt-in)
    scaled: bool = False  # its method's schedule scaled to the protocol's epochs (`scaled_schedule`)


ROWS = (
    # The ceiling: the same model and schedule on the fully labelled training set (and the regime's base).
    Row("full_labels", "Full labels (ceiling)", {"partial_loss_mode": "negative", **CE_GAMMAS},
        full_labels=True),
    Row("ignore_ce", "Ignore, CE", {"partial_loss_mode": "ignore", **CE_GAMMAS}, writes_prior=True),
    Row("negative_ce", "Negative, CE", {"partial_loss_mode": "negative", **CE_GAMMAS}, writes_prior=True),
    # ASL(4,1) with un-annotated labels as negatives (their gamma too). Clip 0: the paper's train.py
    # defaults --clip to 0 and its README gives none; the clip-0.05 reading is the opt-in negative_asl_clip.
    Row("negative_asl", "Negative, ASL(4,1)", ASL_FLAGS),
    Row("csl", "CSL, Selective P-ASL", CSL_FLAGS, column_flags=CSL_COLUMNS, needs_prior=True),
    # The README's literal threshold 0.5 beside the embedded protocol's 'share' rule.
    Row("csl_readme_threshold", "CSL, README threshold 0.5", CSL_FLAGS, column_flags=CSL_COLUMNS,
        needs_prior=True, prior_threshold=0.5, protocols=("embedded",), same_run_as="csl"),
    Row("negative_asl_clip", "Negative, ASL(4,1), clip 0.05", {**ASL_FLAGS, "clip": 0.05}, default=False),
    # The mechanism (--rows mechanism): CSL's two components apart, and the top-k swept; measurements,
    # none tuned on test mAP.
    *(Row(f"csl_{name}", f"CSL, {label}", {**CSL_FLAGS, **flags}, column_flags=CSL_COLUMNS,
          needs_prior=needs_prior, protocols=("embedded",), default=False)
      for name, label, flags, needs_prior in (
          ("prior_only", "prior only (top-k 0)", {"likelihood_topk": 0}, True),
          ("likelihood_only", "likelihood only (no prior)", {"likelihood_topk": 5}, False),
          ("topk1", "top-k 1", {"likelihood_topk": 1}, True),
          ("topk2", "top-k 2", {"likelihood_topk": 2}, True))),
    # CSL's focusing without its prior or top-k: separates the prior's share of the prior-only row.
    Row("negative_focal", "Negative, CSL's focusing (no prior)",
        {"partial_loss_mode": "negative", "gamma_pos": 0, "gamma_unann": 4}, column_flags=CSL_COLUMNS,
        protocols=("embedded",), default=False),
)

# docs/peer_methods.md "Schedules at the protocol's length": per epoch-based hyper-parameter, the official
# run's epochs and how the value maps to T epochs at the same fraction of training. 'step': a per-epoch
# step from epoch 2 on (LL's delta: the share reached at the last epoch, (T - 1) x delta, is kept);
# 'epochs_before': whole epochs before the schedule starts (at least 1: the method needs a trained model).
# GR's schedules are already fractions e / T of training, the same at every length.
OFFICIAL_SCHEDULES = {  # hyper-parameter: (mode, official epochs, kind, offset of the flag to the epochs)
    "ll_r_delta": ("ll_r", 10, "step", 0),  # LargeLossMatters config.py: num_epochs 10
    "ll_ct_delta": ("ll_ct", 10, "step", 0),
    "ll_cp_delta": ("ll_cp", 10, "step", 0),
    "apl_warmup_epochs": ("em_apl", 10, "epochs_before", 0),  # SPML-AckTheUnknown, COCO: 10 epochs
    "splc_start_epoch": ("splc", 30, "epochs_before", 1),  # robust-loss-mlml: stopped at epoch 30
}


def scaled_schedule(mode: str, protocol_epochs: int) -> dict:
    """The flags of ``mode``'s epoch-based hyper-parameters scaled from its official run to
    ``protocol_epochs`` (empty for a mode without one)."""
    flags = {}
    for name, (owner, official, kind, offset) in OFFICIAL_SCHEDULES.items():
        if owner != mode:
            continue
        value = LOSS_HYPERPARAMETERS[name].default
        if kind == "step":
            flags[name] = float(f"{value * (official - 1) / max(1, protocol_epochs - 1):.6g}")
        else:  # round half up, at least one epoch and at least one epoch left
            before = math.floor((value - offset) * protocol_epochs / official + 0.5)
            flags[name] = min(max(1, before), max(1, protocol_epochs - 1)) + offset
    return flags

# The later methods (--rows peers) at their published defaults, with the protocol's schedule.
PEER_LABELS = {mode: LOSS_MODES[mode].label for mode in PEER_MODES}
# The modes whose schedule the protocol's length changes: their rows at the official values are "literal".
SCALED_MODES = ("ll_r", "ll_ct", "ll_cp", "em_apl")
PEER_ROWS = tuple(Row(mode, PEER_LABELS[mode] + (" (literal schedule)" if mode in SCALED_MODES else ""),
                      {"partial_loss_mode": mode}, default=False) for mode in PEER_MODES)
# BoostLU (Kim et al. 2023) is a head option, combined with LL-R as in their code (their --alpha 5).
BOOSTLU_ROWS = (Row("ll_r_boostlu", "LL-R + BoostLU (Kim et al. 2023) (literal schedule)",
                    {"partial_loss_mode": "ll_r", "boostlu_alpha": 5}, default=False),)
# --rows schedules: the same rows with the schedule scaled to the protocol's length.
SCHEDULE_ROWS = tuple(Row(f"{row.key}_scaled", row.label.replace("literal", "scaled"), row.flags,
                          default=False, scaled=True)
                      for row in PEER_ROWS + BOOSTLU_ROWS if row.flags["partial_loss_mode"] in SCALED_MODES)
ROWS = ROWS + PEER_ROWS + BOOSTLU_ROWS + SCHEDULE_ROWS

# The row each row differs from in one component only: the paired table compares them too (which part of a
# difference comes from where), besides the best baseline and Negative.
ONE_CHANGE_FROM = {"negative_focal": "negative_ce",  # + CSL's focusing
                   "csl_prior_only": "negative_focal",  # + the prior
                   "csl": "csl_prior_only",  # + the likelihood top-k
                   "csl_likelihood_only": "negative_focal",  # + the top-k, no prior
                   "csl_topk1": "csl_prior_only", "csl_topk2": "csl_prior_only",
                   **{row.key: row.key[:-len("_scaled")] for row in SCHEDULE_ROWS}}  # the schedule scaled

# --rows accepts these names for groups of rows.
ROW_GROUPS = {
    "peers": (*(row.key for row in ROWS if row.default), *(row.key for row in PEER_ROWS + BOOSTLU_ROWS)),
    "mechanism": ("ignore_ce", "negative_ce", "csl", "csl_prior_only", "csl_likelihood_only", "csl_topk1",
                  "csl_topk2", "negative_focal"),
    "schedules": tuple(key for row in SCHEDULE_ROWS for key in (row.key[:-len("_scaled")], row.key)),
    "regime": ("full_labels", "ignore_ce", "negative_ce"),
    "baselines": ("negative_asl", "negative_asl_clip"),
}

PAPER_RESULTS = {  # COCO 2014, TResNet-M, 448 px (the paper's README)
    ("fpc", "ignore_ce"): 76.46, ("fpc", "negative_ce"): 81.24, ("fpc", "negative_asl"): 81.64,
    ("fpc", "csl"): 83.44, ("rps", "ignore_ce"): 84.90, ("rps", "negative_ce"): 81.21,
    ("rps", "negative_asl"): 81.91, ("rps", "csl"): 85.21,
    # the paper's CSL runs used the README threshold 0.5 themselves
    ("fpc", "csl_readme_threshold"): 83.44, ("rps", "csl_readme_threshold"): 85.21,
}

# A benchmark's regime: the full-label ceiling and the shares of it Ignore and Negative (CE) reach on
# FPC. COCO's: a full-label TResNet-M near 86 mAP (the ASL line of work), 76.46 = 0.89, 81.24 = 0.94.
REGIME_ROWS = ("ignore_ce", "negative_ce")
COCO_REGIME = {"ceiling": 86.0, "ignore_ce": 0.89, "negative_ce": 0.94}

# The README threshold 0.5 ignores 1 of COCO's 80 classes (person, 0.54; the next 0.24). The embedded
# protocol ignores that share (`share_threshold`), with no look at test mAP.
PAPER_IGNORED_CLASS_SHARE = 1 / 80
README_PRIOR_THRESHOLD = 0.5


@dataclass
class Protocol:
    name: str
    data: str
    columns: dict  # scheme -> simulate_partial_param
    train_flags: dict
    prior_threshold: str  # a number, or 'share' for the rule above
    upstream: dict | None = None  # embedded only: pretraining of the backbone
    rows: tuple | None = None  # row keys to run (None: all of this protocol's rows)
    design: str = "shape_colour"  # embedded only: the class design of the generator
    data_config: dict | None = None  # embedded only: the generator config of the data (COCO: its path)
    truth_data: str | None = None  # embedded: the noise-free labels the mechanism is classified against


# The train.py flags of the paper's protocol on COCO 2014 (``--data``) and the embedded one.
COCO_EXPECTED_POSITIVES = 2.9  # EPR's E on COCO: Cole et al.'s train.py lookup
COCO_FLAGS = {"model-name": "tresnet_m", "model-path": "none", "metadata": None, "image-size": 448,
              "epochs": 30, "batch-size": 64, "lr": 2e-4, "workers": 8, "device": "auto",
              "dataset_type": "coco", "num-classes": 80}
# Chosen by docs/regime.md's calibration before any CSL row ran on it: of the demos that fit 25 minutes
# on 2 cores, the closest to COCO's regime (FPC: 88.2, 0.78, 0.98; COCO about 86, 0.89, 0.94).
EMBEDDED_DEFAULTS = {"design": "glyphs", "n_train": 20000, "epochs": 6}
# lr 8e-3: chosen on full labels (favouring no method) of the first default, shape_colour 6,000 x 10
# (2e-3 / 8e-3 / 2e-2: 39.6 / 46.3 / 42.7 mAP, docs/results.md); the calibration kept it.
EMBEDDED_FLAGS = {"model-name": "test_resnet.r160_in1k", "image-size": 32,
                  "epochs": EMBEDDED_DEFAULTS["epochs"], "batch-size": 64, "lr": 8e-3, "workers": 0,
                  "device": "auto", "dataset_type": "coco", "num-classes": 48, "ema_decay": 0.997,
                  "cache_images": True}
# reproduce.py's fields that the protocols place themselves; `user_train_flags` passes on the others.
PROTOCOL_FLAGS = ("data", *(name.replace("-", "_") for name in COCO_FLAGS))


def protocol_flags(defaults: dict, args, extra_flags: dict | None) -> dict:
    """``defaults``, each replaced by the user's value in ``args`` where given, then ``extra_flags``."""
    given = {name: getattr(args, name.replace("-", "_"), None) for name in defaults}
    return {**defaults, **{name: value for name, value in given.items() if value is not None},
            **(extra_flags or {})}


def flags_to_argv(flags: dict) -> list[str]:
    """None and False are left out, True is a bare switch."""
    argv = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return argv


def threshold_rule(text: str) -> str:
    """--prior_threshold: a number, or 'share' (kept as text, resolved per prior)."""
    if text != "share":
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number or 'share', got {text!r}") from None
    return text


def user_train_flags(args, train_flags) -> dict:
    """The train.py flags among ``train_flags`` that the user set and the protocols leave alone, for every
    run (a ``--no-X`` boolean as ``no-X``)."""
    if getattr(args, "dataset_type", None) not in (None, "coco", "csv"):
        raise ValueError(f"--dataset_type {args.dataset_type}: reproduce.py runs the paper's table on COCO "
                         "(the default) or on your own data as CSV (docs/your_data.md); convert it to csv")
    extra = {}
    for name in train_flags:
        value = getattr(args, name, None)
        if name in PROTOCOL_FLAGS or value is None:
            continue
        extra.update({f"no-{name}": True} if value is False else {name: value})
    return extra


def embedded_fpc_param(n_train: int, scale: float = 1.0) -> int:
    """FPC n: ``scale`` times COCO's fraction of the training set (1,000 of 82,081)."""
    return max(1, round(COCO_FPC_PARAM / COCO_TRAIN_IMAGES * n_train * scale))


# --sensitivity (b): the upstream set drawn from the downstream generator with another seed (other images).
SAME_CLASSES_UPSTREAM_SEED = 1


def embedded_protocol(args, extra_flags: dict | None = None, same_classes_upstream: bool = False) -> Protocol:
    """``same_classes_upstream``: the backbone is pretrained on the downstream classes, fully labelled, on
    images of another seed (the ImageNet-21k analogue), instead of the factorised upstream classes."""
    flags = protocol_flags(EMBEDDED_FLAGS, args, extra_flags)
    # The first design's folders keep their names; the generator configs are part of every run's identity.
    suffix = "" if args.design == "shape_colour" else f"_{args.design}"
    data_config = dataset_config("embedded", args.n_train, args.n_test, 32, 0, args.design)
    variant, seed = ("embedded", SAME_CLASSES_UPSTREAM_SEED) if same_classes_upstream else ("upstream", 0)
    upstream_config = dataset_config(variant, args.n_train, 1000, 32, seed, args.design)
    folder = f"embedded_upstream{suffix}" + ("_same_classes" if same_classes_upstream else "")
    upstream_flags = dict(flags, data=os.path.join(args.data_root, folder),
                          epochs=args.upstream_epochs, partial_loss_mode="negative", estimate_prior="none",
                          seed=0, stop_epoch=None, **CE_GAMMAS)  # its own --upstream_epochs, no --stop_epoch
    upstream_flags.update({"num-classes": len(class_names(variant, args.design)), "model-path": "none"})
    settings = run_settings(upstream_flags, args.nproc_per_node, upstream_config)
    # The cached backbone is named after the hash of its settings: any changed setting pretrains anew.
    name = f"embedded_upstream_{args.design}_{flags['model-name']}_{settings_identity(settings)[:12]}.pth"
    upstream = {"data": upstream_flags["data"], "config": upstream_config, "flags": upstream_flags,
                "settings": settings, "path": os.path.join(args.models_dir, name)}
    columns = {"fpc": embedded_fpc_param(args.n_train), "rps": 0.5}
    return Protocol("embedded", os.path.join(args.data_root, f"embedded{suffix}"), columns, flags,
                    args.prior_threshold or "share", upstream, design=args.design, data_config=data_config)


def coco_protocol(args, extra_flags: dict | None = None) -> Protocol:
    return Protocol("coco", args.data, dict(COCO_COLUMNS), protocol_flags(COCO_FLAGS, args, extra_flags),
                    args.prior_threshold or str(README_PRIOR_THRESHOLD))


@functools.cache
def full_training_labels(data: str, dataset_type: str = "coco", metadata: str | None = None):
    """(dense labels, image ids, class names) of the training split as its files give them."""
    full = build_split(dataset_type, "train", data=data, metadata=metadata)
    return full.labels.to_dense(), list(full.image_ids), list(full.class_names)


def csv_protocol(args, extra_flags: dict | None = None) -> Protocol:
    """Your own data (``--dataset_type csv``): the paper's COCO recipe on it, its class count from the CSV.
    Columns: ``given`` (the CSV's labels as annotated) and, on top, FPC with COCO's share of the training
    set per class and RPS(0.5). The full-label row (the ceiling) runs only where train.csv is complete."""
    metadata = getattr(args, "metadata", None)
    labels = full_training_labels(args.data, "csv", metadata)[0]
    defaults = dict(COCO_FLAGS, dataset_type="csv", **{"num-classes": labels.shape[1]})
    flags = protocol_flags(defaults, args, extra_flags)
    columns = {GIVEN_SCHEME: None, "fpc": embedded_fpc_param(labels.shape[0]), "rps": 0.5}
    # The CSV's identity: its files' content (a changed CSV is another protocol), as the generator's config.
    config = {}
    for split in ("train", "val"):
        path = find_split_csv(split, args.data, metadata)
        config.update({f"{split}_csv": path, f"{split}_csv_sha256": file_hash(path)})
    classes = os.path.join(os.path.dirname(config["train_csv"]), CLASSES_FILE)
    if os.path.isfile(classes):
        config.update(classes_txt=classes, classes_txt_sha256=file_hash(classes))
    return Protocol("csv", args.data, columns, flags, args.prior_threshold or str(README_PRIOR_THRESHOLD),
                    data_config=config)


def training_labels(protocol: Protocol, data: str | None = None):
    """`full_training_labels` of the protocol's data (or of ``data``, read the protocol's way)."""
    return full_training_labels(data or protocol.data, protocol.train_flags["dataset_type"],
                                protocol.train_flags.get("metadata"))


def labels_complete(protocol: Protocol) -> bool:
    """Whether the training labels annotate every (image, class): only then is a full-label row a ceiling."""
    return protocol.name != "csv" or bool((training_labels(protocol)[0] != -1).all())


def protocol_rows(protocol: Protocol) -> list[Row]:
    """The rows to run; a CSV with un-annotated training labels has no full-label ceiling to train."""
    name = "coco" if protocol.name == "csv" else protocol.name  # your data takes COCO's rows
    return [row for row in ROWS if name in row.protocols
            and (row.key in protocol.rows if protocol.rows is not None else row.default)
            and (not row.full_labels or labels_complete(protocol))]


def select_columns(protocol: Protocol, schemes: str | None) -> list[str]:
    """--schemes (default: the CSV's own labels for csv, the paper's FPC and RPS otherwise)."""
    schemes = schemes or (GIVEN_SCHEME if protocol.name == "csv" else "fpc,rps")
    wanted = [s.strip() for s in schemes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(protocol.columns))
    if unknown:
        raise ValueError(f"--schemes: unknown {unknown}; choose from {sorted(protocol.columns)}")
    protocol.columns = {s: protocol.columns[s] for s in wanted}
    return wanted


def select_rows(protocol: Protocol, keys: str | None) -> tuple | None:
    """The --rows selection, validated; a row that needs a prior brings ignore_ce (stage 1) along."""
    if keys is None:
        return None
    wanted = []
    for key in (k.strip() for k in keys.split(",") if k.strip()):
        wanted += [k for k in ROW_GROUPS.get(key, (key,)) if k not in wanted]
    name = "coco" if protocol.name == "csv" else protocol.name
    available = [row.key for row in ROWS if name in row.protocols]
    unknown = [k for k in wanted if k not in available]
    if unknown or not wanted:
        raise ValueError(f"--rows: unknown or empty {unknown or keys!r}; choose from {available} or the "
                         f"groups {sorted(ROW_GROUPS)}")
    if any(row.needs_prior for row in ROWS if row.key in wanted) and "ignore_ce" not in wanted:
        wanted.insert(0, "ignore_ce")
    return tuple(wanted)


def share_threshold(prior, share: float = PAPER_IGNORED_CLASS_SHARE) -> float:
    """The midpoint between the k-th and (k+1)-th largest prior, k = max(1, round(C * share))."""
    values = np.sort(np.asarray(prior, dtype=np.float64))[::-1]
    k = min(max(1, round(len(values) * share)), len(values) - 1)
    return float((values[k - 1] + values[k]) / 2)


def resolve_threshold(protocol: Protocol, row: Row, prior_path: str) -> float:
    if row.prior_threshold is not None:
        return float(row.prior_threshold)
    if protocol.prior_threshold == "share":
        return share_threshold(read_prior_csv(prior_path).numpy())
    return float(protocol.prior_threshold)
