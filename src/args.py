"""Command-line flags, declared once in parent parsers shared by the commands. The paper's train.py flags
keep their names, meanings and defaults; it mixes ``--snake_case`` and ``--kebab-case``, so every long
option takes both (:func:`add_flag`)."""

from __future__ import annotations

import argparse
import os
import urllib.parse
import urllib.request

from src.data import DATASET_TYPES
from src.data.partial_labels import SIMULATION_MODES
from src.loss_functions import (
    LOSS_HYPERPARAMETERS,
    LOSS_MODE_NAMES,
    LOSS_MODES,
    LOSS_SETTINGS,
    PEER_MODES,
    REDUCTIONS,
)
from src.models import is_remote_weights
from src.utils.amp import AMP_DTYPES
from src.utils.cli import HelpFormatter as HelpFormatter  # the commands' import
from src.utils.cli import MissingFileError, group_of
from src.utils.values import IMAGE_SIZE_BOUND, bounded, optional_path
from src.utils.values import is_none_path as is_none_path  # train.py's import

PAPER_DEFAULT_MODEL_PATH = "./tresnet_m.pth"
ESTIMATE_PRIOR_CHOICES = ("auto", "clean", "running_average", "both", "none")


def add_flag(parser, *names: str, **kwargs):
    """``parser.add_argument`` with both spellings of each long option; the first fixes ``dest``."""
    others = ["--" + (name[2:].replace("_", "-") if "_" in name else name[2:].replace("-", "_"))
              for name in names if name.startswith("--")]
    return parser.add_argument(*names, *(other for other in others if other not in names), **kwargs)


# The range types of the flags (messages name the bound; argparse adds the flag).
positive_int = bounded(int, "an integer >= 1")
non_negative_int = bounded(int, ">= 0")
fraction = bounded(float, "a fraction in (0, 1)")
positive_float = bounded(float, "> 0")
decay = bounded(float, "in [0, 1)")
probability = bounded(float, "a probability in [0, 1]")
image_size = bounded(int, IMAGE_SIZE_BOUND)


def require_weights(path: str, flag: str, what: str, hint: str) -> str:
    """`require_file`, except for weights fetched on demand (checked when fetched)."""
    return path if is_remote_weights(path) else require_file(path, flag, what, hint + " (or timm:<name>, a "
                                                             "URL, csl:<name>; docs/checkpoints.md)")


def weights_output_path(spec: str, name: str) -> str:
    """``name`` next to the weights file ``spec`` (a ``file://`` URL's too: two runs' best.pth never share an
    output), or in ./outputs for weights fetched on demand."""
    url = urllib.parse.urlparse(spec)
    if url.scheme.lower() == "file" and "://" in spec:
        return os.path.join(os.path.dirname(urllib.request.url2pathname(url.path)), name)
    folder = "outputs" if is_remote_weights(spec) else os.path.dirname(spec)
    return os.path.join(folder, name)


def require_file(path: str, flag: str, what: str, hint: str) -> str:
    if not os.path.isfile(path):
        raise MissingFileError(f"{flag}: {what} {path!r} does not exist; {hint}")
    return path


def default_workers(wanted: int = 8) -> int:
    """Data loading workers per process: ``wanted``, never more than the machine's cores."""
    return min(wanted, os.cpu_count() or 1)


def data_parser(batch_size: int = 64, workers: int | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("data")
    add_flag(group, "--data", metavar="DIR", type=str, default="./data",
             help="path to dataset (COCO layout: DIR/annotations, DIR/train2014, DIR/val2014; the embedded "
                  "dataset uses it too)")
    add_flag(group, "--metadata", type=str, default="./data/COCO_2014",
             help="folder of the paper's annotation files (train.json/val.json for COCO; label files "
                  "for OpenImages/LVIS; train.csv/val.csv for csv, default there: --data)")
    add_flag(group, "--dataset_type", type=str, choices=DATASET_TYPES, default="coco",
             help="dataset reader (the embedded dataset uses the coco layout; csv: your own data, "
                  "docs/your_data.md)")
    add_flag(group, "--image-size", type=image_size, default=448, metavar="N", help="input image size")
    add_flag(group, "-b", "--batch-size", type=positive_int, default=batch_size, metavar="N",
             help="mini-batch size per process")
    add_flag(group, "-j", "--workers", type=non_negative_int, metavar="N",
             default=default_workers() if workers is None else workers,
             help="data loading workers per process: min(8, the machine's cores) unless given")
    add_flag(group, "--skip_bad_images", action="store_true",
             help="drop missing or undecodable images at start-up (with a warning) instead of failing")
    add_flag(group, "--verify_images", type=str, choices=("header", "full"), default="header",
             help="start-up check of the training images: header (each header parses) or full (every image "
                  "decoded once; finds truncated files). Evaluation images are always fully decoded")
    add_flag(group, "--jpeg_draft", action=argparse.BooleanOptionalAction, default=True,
             help="decode large JPEGs at reduced scale when that still covers --image-size (faster; "
                  "--no-jpeg_draft decodes at full resolution, bit-exact with plain PIL)")
    add_flag(group, "--cache_images", action="store_true",
             help="decode every image once per process and keep the pixels in memory when the dataset fits "
                  "in 512 MiB (the embedded set; augmentation is unchanged)")
    add_flag(group, "--unknown_mids", type=str, choices=("error", "skip"), default=None,
             help="OpenImages: labels whose class MID is not in the class list - error, or skip and count "
                  "(default: skip for the official CSVs, which cover ~20k classes; error for data.csv)")
    add_flag(group, "--openimages_val_split", type=str, default="validation",
             help="OpenImages (official files): evaluation split folder and CSV, e.g. validation or test")
    return parser


def partial_labels_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("partial labels")
    add_flag(group, "--simulate_partial_type", type=str, choices=SIMULATION_MODES, default=None,
             help="simulate partial annotation of the (fully labelled) train set: fpc (fixed number of "
                  "annotations per class) or rps (random per sample); see src/data/partial_labels.py")
    add_flag(group, "--simulate_partial_param", type=float, default=1000,
             help="parameter of the simulation: fpc - positives and negatives kept per class; rps - the "
                  "probability of REMOVING each label (rps 0.9 keeps about 10%%)")
    add_flag(group, "--partial_labels", type=str, default=None, metavar="FILE",
             help="partial labels of the train set saved by 'python -m coco_simulation' (.npz)")
    add_flag(group, "--seed", type=non_negative_int, default=0,
             help="seed of initialisation, simulation, data order and augmentation")
    return parser


def unsafe_pickle_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    _add_unsafe_pickle(parser.add_argument_group("model"))
    return parser


def _add_unsafe_pickle(group) -> None:
    add_flag(group, "--unsafe_pickle", action="store_true",
             help="allow checkpoints that hold arbitrary Python objects (torch.load weights_only=False). "
                  "Loading such a file can execute code: only for files from a source you trust")


def model_parser(path_default: str | None = PAPER_DEFAULT_MODEL_PATH,
                 name_default: str | None = "tresnet_m") -> argparse.ArgumentParser:
    """--model-path is required when ``path_default`` is None."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("model")
    add_flag(group, "--model-name", type=str, default=name_default,
             help="architecture: tresnet_m, tresnet_l, tresnet_xl or any timm model name"
                  + ("" if name_default else "; default: stored in our checkpoints, inferred from the "
                                             "tensor shapes of the paper's TResNets"))
    if path_default is None:
        add_flag(group, "--model-path", type=str, required=True,
                 help="checkpoint: ours (train.py best.pth / last.pth) or the paper's released .pth; also "
                      "csl:<name> (the paper's model zoo), an http(s):// URL or timm:<name> "
                      "(docs/checkpoints.md)")
    else:
        add_flag(group, "--model-path", type=str, default=path_default,
                 help="ImageNet weights for the backbone: a file, timm:<name> (e.g. "
                      "timm:tresnet_m.miil_in21k) or an http(s):// URL (docs/checkpoints.md); 'none': random "
                      "initialisation")
    _add_unsafe_pickle(group)
    return parser


def eval_weights_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    add_flag(parser.add_argument_group("model"), "--use_ema", action="store_true",
             help="use the EMA weights stored in our checkpoint")
    return parser


def device_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("device")
    add_flag(group, "--device", type=str, default="auto",
             help="auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    add_flag(group, "--amp", action=argparse.BooleanOptionalAction, default=None,
             help="mixed precision (default: on for CUDA, off on CPU); losses are computed in float32")
    add_flag(group, "--amp_dtype", type=str, choices=tuple(AMP_DTYPES), default="float16",
             help="autocast dtype with --amp: float16 (with GradScaler when training) or bfloat16")
    add_flag(group, "--dist_timeout", type=positive_int, default=300, metavar="SECONDS",
             help="under torchrun: a collective that waits this long for another process (stopped, hung, "
                  "dead) ends the job")
    return parser


def optimisation_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("optimisation")
    add_flag(group, "--lr", type=positive_float, default=2e-4,
             help="maximal learning rate of OneCycleLR (Adam)")
    add_flag(group, "--epochs", type=positive_int, default=30,
             help="number of epochs the OneCycle schedule spans")
    add_flag(group, "--stop_epoch", type=positive_int, default=None,
             help="stop after this many epochs; the schedule still spans --epochs (default: --epochs; "
                  "the paper's loop ran one more, docs/usage.md)")
    add_flag(group, "--weight_decay", type=float, default=1e-4,
             help="weight decay, applied to weights only (not to biases and normalisation parameters)")
    add_flag(group, "--ema_decay", type=decay, default=0.9997,
             help="decay of the EMA of the weights, in [0, 1)")
    return parser


def loss_flag_groups() -> dict[str, tuple[str, ...]]:
    """Help group title -> the loss flags it holds: the settings, CSL's, then one group per later method
    (the modes of one paper, from `LOSS_MODES`)."""
    groups = {"partial labels": ("partial_loss_mode", "loss_reduction"), "CSL": ("prior_path",)}
    papers: dict[str, list[str]] = {}
    for mode, info in LOSS_MODES.items():
        papers.setdefault(info.reference if mode in PEER_MODES else "", []).append(mode)
    for reference, modes in papers.items():
        labels = [LOSS_MODES[mode].label for mode in modes]
        title = "CSL" if not reference else f"{'/'.join(label.split(' (')[0] for label in labels)} (" \
            + labels[0].split(" (")[1]
        names = [name for mode in modes for name in LOSS_MODES[mode].hyperparameters]
        groups[title] = tuple(dict.fromkeys((*groups.get(title, ()), *names)))
    return groups


def _add_loss_flags(parser) -> None:
    special = {"partial_loss_mode": dict(choices=LOSS_MODE_NAMES), "prior_path": dict(type=optional_path),
               "loss_reduction": dict(choices=REDUCTIONS)}
    entries = {**LOSS_SETTINGS, **LOSS_HYPERPARAMETERS}
    for title, names in loss_flag_groups().items():
        for name in names:
            entry = entries[name]
            options = special.get(name) or dict(type=bounded(type(entry.default), entry.bound) if entry.bound
                                                else type(entry.default))
            text = entry.help + (f" (default: {entry.unset_means})" if entry.unset_means else "")
            add_flag(group_of(parser, title), f"--{name}", default=entry.flag_default,
                     help=text.replace("%", "%%"), **options)


def _add_run_flags(parser) -> None:
    model, output = group_of(parser, "model"), group_of(parser, "output")
    add_flag(model, "--num-classes", type=positive_int, default=80,
             help="number of classes; must match the dataset")
    add_flag(model, "--do_bottleneck_head", action=argparse.BooleanOptionalAction, default=None,
             help="the paper's OpenImages head: Linear(features, 512) then Linear(512, classes) "
                  "(default: on for --dataset_type openimages, off otherwise)")
    add_flag(model, "--boostlu_alpha", type=positive_float, default=None, metavar="A",
             help="BoostLU (docs/peer_methods.md): positive class activations x A before pooling, at "
                  "training and test time; their value 5, with --partial_loss_mode ll_r. Default: off")
    add_flag(model, "--output_stride", type=int, choices=(8, 16, 32), default=None,
             help="the backbone's output stride (timm's dilation; stored in the checkpoint): 8 gives the "
                  "head a 4 x 4 map at 32 px. Default: the model's own (32 for ResNets and TResNets)")
    add_flag(model, "--grad_checkpointing", action="store_true",
             help="gradient checkpointing (less memory, ~30%% slower)")
    add_flag(model, "--channels_last", action="store_true", help="channels_last memory format")
    add_flag(model, "--compile", action="store_true", help="torch.compile the model (CUDA only)")
    add_flag(model, "--sync_bn", action="store_true", help="SyncBatchNorm under DDP")
    add_flag(output, "--path_dest", type=str, default=None,
             help="output folder (default: a fresh ./outputs/<date>-<time>_<mode>_<labels>); one holding "
                  "another run is refused unless --resume continues it or --overwrite replaces it")
    add_flag(output, "--overwrite", action="store_true",
             help="allow --path_dest to hold another run: its files are removed before this run starts")
    add_flag(output, "--resume", type=str, default=None, metavar="PATH",
             help="continue a run exactly from its checkpoint (e.g. <path_dest>/last.pth)")
    add_flag(output, "--val_split", type=fraction, default=None, metavar="FRACTION",
             help="select the best epoch on this held-out fraction of the training set (seeded), not on "
                  "the evaluation set (the paper's protocol; docs/usage.md)")
    add_flag(output, "--estimate_prior", type=str, choices=ESTIMATE_PRIOR_CHOICES, default="auto",
             help="class prior written at the end: clean (eval pass, best model), running_average (the "
                  "paper's), both, none; auto: clean in ignore mode (stage 1), else none")
    add_flag(output, "--prior_dest", type=str, default=None,
             help="folder of the estimated prior CSV (default: <path_dest>/priors)")
    add_flag(output, "--record_ignored", action="store_true",
             help="selective mode: write the un-annotated entries the top-k ignored in the last epoch to "
                  "<path_dest>/ignored_last_epoch.npz")
    add_flag(output, "--thre", type=probability, default=0.5,
             help="score threshold of the CP/CR/CF1/OP/OR/OF1 metrics printed per epoch")
    add_flag(output, "--print-freq", "-p", type=positive_int, default=64, metavar="N",
             help="print the training loss every N batches")
    add_flag(output, "--debug_mode", type=str, default="hyperml",
             help="accepted (and ignored) for compatibility with the paper's scripts")


class _Unset:
    def __repr__(self) -> str:
        return "<not given>"


def check_loss_flags_belong(mode: str, given) -> None:
    """A loss hyper-parameter given for a --partial_loss_mode that does not use it: ValueError naming the
    mode(s) it belongs to (the four CSL modes share theirs)."""
    for name in (name for name in given if name in LOSS_HYPERPARAMETERS):
        owners = [owner for owner, info in LOSS_MODES.items() if name in info.hyperparameters]
        if mode in LOSS_MODES and mode not in owners:
            raise ValueError(f"--{name} is a hyper-parameter of --partial_loss_mode {' / '.join(owners)}, "
                             f"not of {mode}: drop --{name}, or pass --partial_loss_mode {owners[-1]}")


class TrainParser(argparse.ArgumentParser):
    """train.py's parser. It records which flags the command line gave (``self.given``, destinations):
    argparse sets a default only for attributes missing from the namespace, so each starts as a sentinel that
    only a flag replaces (``--clip 0``, the default passed explicitly, is given). A loss hyper-parameter
    given for another --partial_loss_mode is an error (with --resume, once the run's mode is known)."""

    given: frozenset = frozenset()

    def parse_known_args(self, args=None, namespace=None):
        namespace = argparse.Namespace() if namespace is None else namespace
        unset = _Unset()
        tracked = {action.dest for action in self._actions if action.dest != argparse.SUPPRESS}
        tracked = [name for name in tracked if not hasattr(namespace, name)]
        for name in tracked:
            setattr(namespace, name, unset)
        namespace, extras = super().parse_known_args(args, namespace)
        self.given = frozenset(name for name in tracked if getattr(namespace, name) is not unset)
        for name in tracked:
            if getattr(namespace, name) is unset:
                setattr(namespace, name, self.get_default(name))
        if getattr(namespace, "resume", None) is None:
            try:
                check_loss_flags_belong(getattr(namespace, "partial_loss_mode", None), self.given)
            except ValueError as error:
                self.error(str(error))
        return namespace, extras


def build_train_parser() -> argparse.ArgumentParser:
    parser = TrainParser(
        description="Train a multi-label classifier with partial annotations (CSL, arXiv 2110.10955). "
                    "Stage 1: --partial_loss_mode ignore (writes the class prior); stage 2: "
                    "--partial_loss_mode selective --prior_path <prior.csv>. Multi-GPU: torchrun "
                    "--nproc_per_node N train.py ...",
        formatter_class=HelpFormatter,
        parents=[data_parser(), model_parser(), optimisation_parser(), device_parser(),
                 partial_labels_parser()],
    )
    _add_loss_flags(parser)
    _add_run_flags(parser)
    return parser
