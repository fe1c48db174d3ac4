"""Train a multi-label classifier with partial annotations (CSL, arXiv 2110.10955).

The paper's command line (every flag, same names and defaults, both --snake_case and --kebab-case
spellings; see src/args.py) plus device/AMP/seed/resume/DDP options. Two-stage CSL workflow:

1. ``python train.py --partial_loss_mode ignore ...`` trains the temporary model; at the end a clean
   pass over the training images (eval mode, no augmentation, best model) writes the class prior
   ``Classes,avg_pred`` to ``<path_dest>/priors/`` (``--estimate_prior``, ``--prior_dest``).
2. ``python train.py --partial_loss_mode selective --prior_path <prior.csv> ...`` trains the target.

Each epoch trains (Adam, weight decay on weights only, OneCycleLR stepped per batch, EMA, AMP),
evaluates the regular and the EMA model, appends a line to ``metrics.jsonl`` and writes
``last.pth`` (and ``best.pth`` when the selection metric improved), atomically. Model selection:
with ``--val_split F`` on a held-out part of the training set, else (the paper's protocol) on the
evaluation set itself, and every printout says which. ``--resume last.pth`` continues exactly;
SIGTERM ends the run at the next step boundary after saving ``last.pth`` (exit code 143).
Multi-GPU: ``torchrun --nproc_per_node N train.py ...`` (see src/engine.py for the DDP semantics).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import torch

from src.args import build_train_parser
from src.engine import (
    AMP_DTYPES,
    EpochResult,
    build_eval_loader,
    build_train_loader,
    describe_map,
    evaluate,
    scalar_metrics,
    seed_epoch,
    train_one_epoch,
)
from src.utils.checkpoint import (
    atomic_torch_save,
    capture_rng_state,
    derive_seed,
    load_training_checkpoint,
    seed_everything,
)
from src.utils.distributed import (
    DistributedContext,
    all_reduce_sum,
    any_rank_true,
    barrier,
    broadcast_tensors,
    cleanup_distributed,
    init_distributed,
    unwrap_model,
)
from src.utils.logging import RunLogger, git_commit, main_print

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a pre-empted job
PAPER_PROTOCOL = "best over epochs on the evaluation set (paper protocol)"
# Settings that shape the training trajectory: a resumed run must use the checkpoint's values.
RESUME_MUST_MATCH = (
    "lr", "epochs", "weight_decay", "model_name", "num_classes", "image_size", "simulate_partial_type",
    "simulate_partial_param", "partial_loss_mode", "clip", "gamma_pos", "gamma_neg", "gamma_unann",
    "alpha_pos", "alpha_neg", "alpha_unann", "likelihood_topk", "prior_threshold", "batch_size", "seed",
    "dataset_type", "partial_labels", "val_split", "ema_decay", "do_bottleneck_head", "amp", "amp_dtype",
    "prior_path", "workers",  # the loss's prior; -j changes how the augmentation RNGs are seeded
)


ONE_CYCLE_PCT_START = 0.2  # the paper's OneCycleLR warm-up share


class ConfigError(ValueError):
    """A command-line setting that cannot work; raised before any training step."""


class TrainingInterrupted(Exception):
    """SIGTERM: last.pth holds the state at the step where the run stopped."""


# ------------------------------------------------------------------------------------------ arguments
def parse_args(argv=None):
    args = build_train_parser().parse_args(argv)
    args.model_path_is_none = str(args.model_path).strip().lower() in ("none", "")
    if args.prior_path is not None and args.prior_path.strip().lower() in ("none", ""):
        args.prior_path = None  # the paper's scripts pass --prior_path None for "no prior"
    if args.do_bottleneck_head is None:  # the paper's OpenImages models have it, its COCO models do not
        args.do_bottleneck_head = str(args.dataset_type).lower() == "openimages"
    return args


def check_args(args) -> None:
    """Errors that need no data: the --model-path file first, then the other settings."""
    if not args.model_path_is_none and args.resume is None and not os.path.isfile(args.model_path):
        raise ConfigError(f"--model-path: file {args.model_path!r} does not exist. Download the ImageNet-"
                          "pretrained weights to that path, or pass --model-path none to train from scratch")
    from src.loss_functions.partial_asymmetric_loss import PARTIAL_LOSS_MODES

    if args.partial_loss_mode not in PARTIAL_LOSS_MODES:
        raise ConfigError(f"--partial_loss_mode: unknown mode {args.partial_loss_mode!r}; choose one of "
                          f"{', '.join(PARTIAL_LOSS_MODES)}")
    if args.prior_path is not None and not os.path.isfile(args.prior_path):
        raise ConfigError(f"--prior_path: file {args.prior_path!r} does not exist; pass the CSV written by "
                          "stage 1 (<path_dest>/priors/*.csv) or by python -m src.prior")
    if args.resume is not None and not os.path.isfile(args.resume):
        raise ConfigError(f"--resume: checkpoint {args.resume!r} does not exist; pass <path_dest>/last.pth "
                          "of the run to continue")
    if args.stop_epoch is not None and args.stop_epoch > args.epochs:
        # The paper's loop simply never reached such a stop epoch; keep that meaning, but say so.
        print(f"note: --stop_epoch {args.stop_epoch} exceeds --epochs {args.epochs}: no early stop, all "
              f"{args.epochs} epochs run", file=sys.stderr)
        args.stop_epoch = None
    if args.likelihood_topk < 0:
        raise ConfigError(f"--likelihood_topk must be >= 0, got {args.likelihood_topk}")
    if not 0.0 <= args.ema_decay < 1.0:
        raise ConfigError(f"--ema_decay must be in [0, 1), got {args.ema_decay}")


def check_device_options(args, ctx: DistributedContext) -> None:
    if args.sync_bn and ctx.device.type != "cuda":
        raise ConfigError(f"--sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation; device is "
                          f"{ctx.device}); drop --sync_bn")


def resolve_amp(args, device: torch.device) -> torch.dtype | None:
    """--amp default: on for CUDA only. float16 needs CUDA (GradScaler); bfloat16 runs anywhere."""
    use_amp = device.type == "cuda" if args.amp is None else args.amp
    if not use_amp:
        return None
    if args.amp_dtype == "float16" and device.type != "cuda":
        raise ConfigError(f"--amp with --amp_dtype float16 needs a CUDA device (device is {device}); use "
                          "--amp_dtype bfloat16 or --no-amp")
    return AMP_DTYPES[args.amp_dtype]


# ------------------------------------------------------------------------------------------ data
def load_data(args, ctx: DistributedContext):
    """(train set, evaluation set, selection set or None, full train set) with checks."""
    from src.data import build_datasets
    from src.data.transforms import build_val_transform
    from src.prior import eval_view

    train_full, eval_set = build_datasets(args)
    class_names = list(train_full.class_names)
    if len(class_names) != args.num_classes:
        raise ConfigError(f"--num-classes {args.num_classes} does not match the dataset, which has "
                          f"{len(class_names)} classes ({args.data}); pass --num-classes {len(class_names)}")
    selection_set, train_set = None, train_full
    if args.val_split is not None:
        order = np.random.default_rng(derive_seed(args.seed, 7)).permutation(len(train_full))
        n_select = int(round(args.val_split * len(train_full)))
        if n_select < 1 or n_select >= len(train_full):
            raise ConfigError(f"--val_split {args.val_split} leaves {n_select} of {len(train_full)} training "
                              "images for selection; choose a fraction giving at least one image per side")
        selection_set = eval_view(train_full.subset(np.sort(order[:n_select])),
                                  build_val_transform(args.image_size, draft=args.jpeg_draft))
        train_set = train_full.subset(np.sort(order[n_select:]))
    if len(train_set) < ctx.world_size:
        raise ConfigError(f"the training set has {len(train_set)} images, fewer than the {ctx.world_size} "
                          "processes")
    return train_set, eval_set, selection_set, train_full


# ------------------------------------------------------------------------------------------ model & optim
def build_model(args, ctx: DistributedContext):
    """(model on device, possibly DDP/compiled; the plain module)."""
    from src.models import create_model, load_pretrained_backbone

    torch.manual_seed(args.seed)  # same initialisation on every rank
    model = create_model(args)
    if not args.model_path_is_none and args.resume is None:
        load_pretrained_backbone(model, args.model_path, verbose=ctx.is_main)
    model.to(ctx.device)
    if ctx.distributed and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_model(model, args, ctx: DistributedContext):
    from src.models import maybe_compile

    wrapped = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return maybe_compile(wrapped, args.compile, ctx.device)


def build_optimization(model, args, steps_per_epoch: int, amp_dtype, device):
    from timm.optim import param_groups_weight_decay

    # No weight decay on biases and other 1-d parameters (norm scales/shifts), like the paper's
    # add_weight_decay; Adam's weight decay is the classic L2 term, as in the paper.
    groups = param_groups_weight_decay(model, weight_decay=args.weight_decay)
    optimizer = torch.optim.Adam(groups, lr=args.lr, weight_decay=0)
    total_steps = steps_per_epoch * args.epochs
    # torch's OneCycleLR divides by (pct_start * total_steps - 1): exactly 0 at 5 steps. Fewer steps
    # work (the warm-up phase is skipped); that one count would crash on the first step.
    if float(ONE_CYCLE_PCT_START * total_steps) - 1 == 0:
        raise ConfigError(
            f"--epochs {args.epochs} x {steps_per_epoch} batches per epoch = {total_steps} optimisation "
            f"steps: OneCycleLR (pct_start {ONE_CYCLE_PCT_START}) cannot schedule exactly "
            f"{total_steps} steps; change --epochs or --batch-size")
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                    steps_per_epoch=steps_per_epoch,
                                                    pct_start=ONE_CYCLE_PCT_START)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return optimizer, scheduler, scaler


# ------------------------------------------------------------------------------------------ checkpoints
def training_state(args, model, ema, optimizer, scheduler, scaler, class_names, epoch, steps_done, loss_sum,
                   history, best, prior, ctx) -> dict:
    from src.models import model_metadata

    net = unwrap_model(model)
    return {
        "model": net.state_dict(), "ema": ema.module.state_dict(), **model_metadata(net),
        "class_names": list(class_names), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
        "batches_done": steps_done, "epoch_loss_sum": loss_sum, "rng_state": capture_rng_state(),
        "history": list(history), "best": dict(best), "args": config_dict(args), "world_size": ctx.world_size,
        "train_prior": prior,
    }


def prior_state(train_prior) -> dict | None:
    """Running-average prior sums over all ranks (a collective: every rank must call it)."""
    if train_prior is None:
        return None
    n = train_prior.num_classes
    packed = []
    for key in (True, False):
        total = train_prior._sums[key]
        packed.append(torch.zeros(n, dtype=torch.float64) if total is None else total.detach().double().cpu())
    packed.append(torch.tensor([train_prior._counts[True], train_prior._counts[False]], dtype=torch.float64))
    packed = all_reduce_sum(torch.cat(packed))
    return {"sums_train": packed[:n], "sums_val": packed[n:2 * n],
            "count_train": int(packed[2 * n].round()), "count_val": int(packed[2 * n + 1].round())}


def restore_prior_state(train_prior, state: dict | None, ctx: DistributedContext) -> None:
    """Rank 0 takes the global sums of the checkpoint, the other ranks start from zero, so the final
    all-reduce counts every image once."""
    if train_prior is None or state is None or not ctx.is_main:
        return
    for key, suffix in ((True, "train"), (False, "val")):
        if state[f"count_{suffix}"]:
            train_prior._sums[key] = state[f"sums_{suffix}"].to(ctx.device)
            train_prior._counts[key] = state[f"count_{suffix}"]


def check_resume_compatible(args, checkpoint: dict, ctx: DistributedContext) -> None:
    saved = checkpoint["args"]
    current = config_dict(args)
    differences = [f"--{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
                   for key in RESUME_MUST_MATCH if saved.get(key) != current.get(key)]
    if differences:
        raise ConfigError(f"--resume {args.resume}: the run was started with other settings; pass the same "
                          "values (or start a new run):\n  " + "\n  ".join(differences))
    if checkpoint.get("world_size", 1) != ctx.world_size:
        main_print(ctx.is_main, f"warning: resuming a run of {checkpoint.get('world_size')} processes with "
                                f"{ctx.world_size}; the data order, hence the result, will differ")


def config_dict(args) -> dict:
    return {key: value for key, value in vars(args).items() if not key.startswith("_")}


# ------------------------------------------------------------------------------------------ signals
class StopFlag:
    """Set by SIGTERM; polled at step boundaries (the handler itself does no I/O)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. called from a test runner thread)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# ------------------------------------------------------------------------------------------ prior
def prior_file_stem(args) -> str:
    if args.simulate_partial_type:
        return f"prior_{args.simulate_partial_type}_{args.simulate_partial_param:g}"
    if args.partial_labels:
        return f"prior_{os.path.splitext(os.path.basename(args.partial_labels))[0]}"
    return f"prior_{args.dataset_type}"


def clean_pass_prior(args, ctx, ema, train_full, amp_dtype):
    """Mean sigmoid output of the best checkpoint over the training images, eval mode, no augmentation
    (None when there is no best.pth, e.g. a finished run resumed into a new --path_dest)."""
    from src.data.transforms import build_val_transform
    from src.prior import compute_prior_from_model, eval_view

    best_path = os.path.join(args.path_dest, "best.pth")
    barrier()  # rank 0 has written best.pth
    if not os.path.isfile(best_path):
        main_print(ctx.is_main, f"no {best_path}: clean-pass prior not estimated; run python -m src.prior on "
                                "the run's best.pth")
        return None
    net = ema.module  # free after training: reuse it to hold the best weights
    net.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["model"])
    view = eval_view(train_full, build_val_transform(args.image_size, draft=args.jpeg_draft))
    return compute_prior_from_model(net, view, ctx.device, batch_size=args.batch_size, workers=args.workers,
                                    amp_dtype=amp_dtype)


def estimate_priors(args, ctx, ema, train_full, train_prior, amp_dtype, class_names) -> list[str]:
    """Write the requested prior CSVs (clean pass with the best model, and/or running average)."""
    from src.prior import write_prior_csv

    method = args.estimate_prior
    if method == "auto":
        method = "clean" if args.partial_loss_mode == "ignore" else "none"
    folder = args.prior_dest or os.path.join(args.path_dest, "priors")
    stem = prior_file_stem(args)
    estimates = {}
    if method in ("clean", "both"):
        estimates[f"{stem}.csv"] = clean_pass_prior(args, ctx, ema, train_full, amp_dtype)
    if method in ("running_average", "both") and train_prior is not None:
        train_prior.all_reduce()
        estimates[f"{stem}_running_average.csv"] = train_prior.avg_pred_train.cpu().numpy()
    written = []
    for name, values in estimates.items():
        if values is not None and ctx.is_main:
            written.append(write_prior_csv(os.path.join(folder, name), class_names, values))
            print(f"class prior written to {written[-1]}", flush=True)
    return written


# ------------------------------------------------------------------------------------------ main loop
def evaluate_epoch(model, ema, loaders: dict, ctx, amp_dtype, threshold) -> dict:
    """{(split, variant): metrics} for split in loaders ('test', 'select') and variant regular/ema."""
    results = {}
    for split, loader in loaders.items():
        for variant, net in (("regular", model), ("ema", ema.module)):
            results[(split, variant)] = evaluate(net, loader, ctx.device, amp_dtype=amp_dtype,
                                                 threshold=threshold)
    return results


def _finite_or_low(value: float) -> float:
    """NaN (e.g. a partial mAP with every class skipped) never wins the selection."""
    return value if np.isfinite(value) else -float("inf")


def epoch_record(epoch, result: EpochResult, mean_loss, lr, results, selection_split, seconds) -> dict:
    record = {"epoch": epoch, "loss": mean_loss, "lr": lr, "steps": result.steps_done, "time_s": seconds,
              "train_time_s": result.seconds}
    for (split, variant), metrics in results.items():
        record.update(scalar_metrics(metrics, f"{split}_{variant}_"))
        record[f"{split}_partial"] = metrics["partial"]
    regular = _finite_or_low(results[(selection_split, "regular")]["mAP"])
    ema = _finite_or_low(results[(selection_split, "ema")]["mAP"])
    record["selection_variant"] = "ema" if ema > regular else "regular"
    record["selection_mAP"] = max(regular, ema)
    record["selection_split"] = selection_split
    return record


class Trainer:
    """One training run: :meth:`setup` builds everything (every configuration error is raised there),
    :meth:`train` runs the epochs, :meth:`finish` writes the priors and returns a summary."""

    def __init__(self, args, ctx: DistributedContext):
        self.args, self.ctx = args, ctx
        self.history: list[dict] = []
        self.best = {"metric": -float("inf"), "epoch": None, "variant": None, "test_mAP": None}
        self.start_epoch, self.start_step, self.start_loss_sum, self.resume_rng = 0, 0, 0.0, None
        self.stop = StopFlag()
        self.logger = None
        self.paths = {"last": os.path.join(args.path_dest, "last.pth"),
                      "best": os.path.join(args.path_dest, "best.pth")}

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from timm.utils import ModelEmaV3

        from src.loss_functions.partial_asymmetric_loss import ComputePrior, PartialSelectiveLoss

        args, ctx = self.args, self.ctx
        check_device_options(args, ctx)
        self.amp_dtype = resolve_amp(args, ctx.device)
        seed_everything(args.seed)
        self.train_set, self.eval_set, self.selection_set, self.train_full = load_data(args, ctx)
        self.class_names = list(self.train_full.class_names)
        self.criterion = PartialSelectiveLoss(args, class_names=self.class_names)  # checks the prior
        self.model = build_model(args, ctx)
        self.ema = ModelEmaV3(self.model, decay=args.ema_decay)
        self.train_loader = build_train_loader(self.train_set, args.batch_size, args.workers, args.seed,
                                               ctx.device, ctx.rank, ctx.world_size)
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer, self.scheduler, self.scaler = build_optimization(
            self.model, args, self.steps_per_epoch, self.amp_dtype, ctx.device)
        wants_running = args.estimate_prior in ("running_average", "both")
        self.train_prior = ComputePrior(self.class_names) if wants_running else None
        held_out = self.selection_set is not None
        self.protocol = (f"best epoch selected on a held-out {args.val_split:.0%} of the training set "
                         "(--val_split)" if held_out else PAPER_PROTOCOL)
        self.selection_split = "select" if held_out else "test"
        sets = {"test": self.eval_set, **({"select": self.selection_set} if held_out else {})}
        self.eval_loaders = {split: build_eval_loader(dataset, args.batch_size, args.workers, ctx.device)
                             for split, dataset in sets.items()}
        if args.resume is not None:
            self.load_resume(args.resume)
        self.wrapped = wrap_model(self.model, args, ctx)

    def load_resume(self, path: str) -> None:
        checkpoint = load_training_checkpoint(path)
        check_resume_compatible(self.args, checkpoint, self.ctx)
        self.model.load_state_dict(checkpoint["model"])
        self.ema.module.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        restore_prior_state(self.train_prior, checkpoint.get("train_prior"), self.ctx)
        self.history, self.best = list(checkpoint["history"]), dict(checkpoint["best"])
        self.start_epoch, self.start_step = checkpoint["epoch"], checkpoint["batches_done"]
        self.start_loss_sum, self.resume_rng = checkpoint["epoch_loss_sum"], checkpoint["rng_state"]
        if self.start_step >= self.steps_per_epoch:  # an end-of-epoch checkpoint: continue with the next
            self.start_epoch, self.start_step, self.start_loss_sum = self.start_epoch + 1, 0, 0.0
        main_print(self.ctx.is_main,
                   f"resumed from {path}: epoch {self.start_epoch + 1}, step {self.start_step}")

    def open_outputs(self) -> None:
        args, ctx = self.args, self.ctx
        self.logger = RunLogger(args.path_dest, enabled=ctx.is_main)
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None
        config = config_dict(args)
        config.update(
            resolved_device=str(ctx.device), resolved_amp_dtype=amp, world_size=ctx.world_size,
            git_commit=git_commit(), torch_version=torch.__version__, num_train_images=len(self.train_set),
            num_eval_images=len(self.eval_set),
            num_selection_images=len(self.selection_set) if self.selection_set is not None else 0,
            steps_per_epoch=self.steps_per_epoch, class_names=self.class_names,
            selection_protocol=self.protocol, command=" ".join(sys.argv))
        self.logger.write_args(config)
        if args.resume is not None:
            self.logger.reset_history(self.history)
        main_print(ctx.is_main, f"train {len(self.train_set)} images, evaluation {len(self.eval_set)}, "
                                f"selection {config['num_selection_images']}; {ctx.world_size} process(es) "
                                f"on {ctx.device}, AMP {amp or 'off'}; model selection: {self.protocol}")

    # ---------------------------------------------------------------- checkpoints
    def save(self, name: str, epoch: int, steps_done: int, loss_sum: float, override: dict | None = None):
        prior = prior_state(self.train_prior)  # a collective: before the rank check
        if not self.ctx.is_main:
            return
        state = training_state(self.args, self.wrapped, self.ema, self.optimizer, self.scheduler, self.scaler,
                               self.class_names, epoch, steps_done, loss_sum, self.history, self.best, prior,
                               self.ctx)
        state.update(override or {})
        atomic_torch_save(state, self.paths[name])

    # ---------------------------------------------------------------- loop
    def on_step(self, step: int, loss_value: float, lr: float) -> None:
        self.global_step += 1
        if step % self.args.print_freq == 0:
            self.logger.log_step("train/loss", loss_value, self.global_step)
            self.logger.log_step("train/lr", lr, self.global_step)
        if self.global_step == self.args._debug_sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)  # test hook: a pre-emption notice in the middle of an epoch

    def stop_requested(self) -> bool:
        return any_rank_true(self.stop.requested, self.ctx.device)

    def train_epoch(self, epoch: int) -> EpochResult:
        args, ctx = self.args, self.ctx
        seed_epoch(self.train_loader, args.seed, epoch, ctx.rank)
        resumed = epoch == self.start_epoch and self.start_step > 0
        return train_one_epoch(
            self.wrapped, self.train_loader, self.criterion, self.optimizer, self.scheduler, self.scaler,
            self.ema, ctx.device, epoch, amp_dtype=self.amp_dtype, train_prior=self.train_prior,
            start_step=self.start_step if resumed else 0, loss_sum=self.start_loss_sum if resumed else 0.0,
            resume_rng_state=self.resume_rng if resumed else None, print_freq=args.print_freq,
            num_epochs=args.epochs, should_stop=self.stop_requested, on_step=self.on_step,
            show_progress=ctx.is_main and sys.stderr.isatty())

    def sync_ranks(self) -> None:
        """Give every rank rank 0's buffers and EMA state, the state that is evaluated and saved."""
        broadcast_tensors(list(unwrap_model(self.wrapped).buffers()))
        broadcast_tensors(list(self.ema.module.state_dict().values()))

    def end_epoch(self, epoch: int, result: EpochResult, started: float) -> None:
        self.sync_ranks()
        totals = all_reduce_sum(torch.tensor([result.loss_sum, result.steps_done], dtype=torch.float64))
        mean_loss = float(totals[0] / totals[1])
        results = evaluate_epoch(self.wrapped, self.ema, self.eval_loaders, self.ctx, self.amp_dtype,
                                 self.args.thre)
        record = epoch_record(epoch, result, mean_loss, self.scheduler.get_last_lr()[0], results,
                              self.selection_split, time.perf_counter() - started)
        is_best = record["selection_mAP"] > self.best["metric"]
        if is_best:
            variant = record["selection_variant"]
            self.best = {"metric": record["selection_mAP"], "epoch": epoch, "variant": variant,
                         "test_mAP": results[("test", variant)]["mAP"]}
        record.update(best_epoch=self.best["epoch"], best_selection_mAP=self.best["metric"],
                      best_test_mAP=self.best["test_mAP"])
        self.history.append(record)
        self.logger.log_epoch(record)
        print_epoch(self.ctx, epoch, self.args.epochs, mean_loss, results, record, self.best, self.protocol)
        if is_best:
            selected = self.ema.module if self.best["variant"] == "ema" else unwrap_model(self.wrapped)
            self.save("best", epoch, result.steps_done, result.loss_sum,
                      {"model": selected.state_dict(), "selected_variant": self.best["variant"]})
        self.save("last", epoch, result.steps_done, result.loss_sum)

    def train(self) -> None:
        args = self.args
        self.global_step = self.start_epoch * self.steps_per_epoch + self.start_step
        for epoch in range(self.start_epoch, args.stop_epoch or args.epochs):
            started = time.perf_counter()
            result = self.train_epoch(epoch)
            if result.interrupted:
                self.sync_ranks()
                self.save("last", epoch, result.steps_done, result.loss_sum)
                raise TrainingInterrupted(f"SIGTERM: saved {self.paths['last']} at epoch {epoch + 1}, step "
                                          f"{result.steps_done}/{self.steps_per_epoch}; continue with "
                                          "--resume")
            self.end_epoch(epoch, result, started)
            if args._debug_kill_after_epoch is not None and epoch + 1 == args._debug_kill_after_epoch:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like an OOM-killed / pre-empted job
            if self.stop_requested():
                raise TrainingInterrupted(f"SIGTERM: saved {self.paths['last']} after epoch {epoch + 1}; "
                                          "continue with --resume")
        barrier()

    def finish(self) -> dict:
        priors = estimate_priors(self.args, self.ctx, self.ema, self.train_full, self.train_prior,
                                 self.amp_dtype, self.class_names)
        main_print(self.ctx.is_main, final_summary(self.best, self.protocol, self.selection_set is not None))
        return {"best_epoch": self.best["epoch"], "best_selection_mAP": self.best["metric"],
                "best_test_mAP": self.best["test_mAP"], "best_variant": self.best["variant"],
                "selection_protocol": self.protocol, "priors": priors, "history": self.history,
                "checkpoints": dict(self.paths)}


def run(args) -> dict:
    """Check, set up (configuration errors surface as ConfigError), train, write the priors."""
    check_args(args)
    try:
        ctx = init_distributed(args.device)
    except ValueError as error:  # e.g. --device cuda on a machine without CUDA
        raise ConfigError(str(error)) from error
    trainer = Trainer(args, ctx)
    try:
        try:
            trainer.setup()
        except ConfigError:
            raise
        except (ValueError, FileNotFoundError) as error:  # bad data/prior/checkpoint: before any step
            raise ConfigError(str(error)) from error
        trainer.open_outputs()
        trainer.stop.install()
        trainer.train()
        return trainer.finish()
    finally:
        trainer.stop.restore()
        if trainer.logger is not None:
            trainer.logger.close()
        cleanup_distributed()


def print_epoch(ctx, epoch, epochs, mean_loss, results, record, best, protocol) -> None:
    if not ctx.is_main:
        return
    lines = [f"epoch {epoch + 1}/{epochs}: loss {mean_loss:.2f}, {record['time_s']:.1f}s"]
    names = {"test": "evaluation set", "select": "selection split (held out from training)"}
    for (split, variant), metrics in results.items():
        lines.append(f"  {names[split]}, {variant}: {describe_map(metrics)}, CF1 {metrics['CF1']:.2f}, "
                     f"OF1 {metrics['OF1']:.2f}")
    lines.append(f"  best epoch so far: {best['epoch'] + 1} ({best['variant']}), selection mAP "
                 f"{best['metric']:.2f}, evaluation-set mAP {best['test_mAP']:.2f} [{protocol}]")
    print("\n".join(lines), flush=True)


def final_summary(best, protocol, held_out: bool) -> str:
    if best["epoch"] is None:
        return "no epoch finished"
    if held_out:
        return (f"done. Best epoch {best['epoch'] + 1} ({best['variant']} weights) chosen on the held-out "
                f"split (mAP {best['metric']:.2f}); evaluation-set mAP at that epoch: {best['test_mAP']:.2f}")
    return (f"done. Highest evaluation-set mAP {best['test_mAP']:.2f} at epoch {best['epoch'] + 1} "
            f"({best['variant']} weights) - {protocol}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    return run(args)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as interrupted:
        print(str(interrupted), file=sys.stderr)
        sys.exit(SIGTERM_EXIT_CODE)
