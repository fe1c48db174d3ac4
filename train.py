"""Train a multi-label classifier with partial annotations (CSL, arXiv 2110.10955). Stage 1:
``--partial_loss_mode ignore`` writes the class prior to ``<path_dest>/priors/``; stage 2:
``--partial_loss_mode selective --prior_path <prior.csv>``. This file reads the flags and builds the parts
and callbacks that `src.trainer.Trainer` runs. Multi-GPU: ``torchrun --nproc_per_node N train.py ...``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3

from src.args import build_train_parser, check_loss_flags_belong, is_none_path, require_file, require_weights
from src.callbacks import ConsoleReport, IgnoredRecorder, PriorWriter
from src.data import build_datasets_with_summary, eval_view
from src.data.partial_labels import describe_simulation
from src.data.transforms import build_val_transform
from src.engine import TrainingParts, build_eval_loader, build_train_loader
from src.loss_functions import build_criterion
from src.models import build_model_from_args, load_pretrained_backbone, maybe_compile, resolve_bottleneck_head
from src.prior import ComputePrior, prior_file_stem
from src.trainer import DataSplits, Trainer
from src.utils.amp import resolve_amp
from src.utils.checkpoint import load_training_checkpoint, recorded_args
from src.utils.cli import ConfigError, run_cli
from src.utils.distributed import DistributedContext, cleanup_distributed, init_distributed
from src.utils.logging import git_commit, main_print
from src.utils.run_folder import refuse_overwriting_the_resumed_run, resolve_run_folder, unlock_folder
from src.utils.seed import derive_seed, seed_everything

ONE_CYCLE_PCT_START = 0.2  # the paper's OneCycleLR warm-up share


# How this process runs, not what the run is: a resumed run never takes these from its checkpoint.
PROCESS_FLAGS = ("resume", "overwrite", "path_dest", "device", "print_freq", "compile", "unsafe_pickle")


def parse_args(argv=None):
    return build_train_parser().parse_args(argv)


def take_run_settings(args, given: set[str], checkpoint: dict) -> argparse.Namespace:
    """--resume: the run's own settings (the checkpoint's ``args``) for every flag not given again; a given
    flag that changes the run is refused later (`src.trainer.check_resume_compatible`). The run continues
    in the checkpoint's folder unless --path_dest says otherwise."""
    saved = recorded_args(checkpoint)
    taken = {key: value for key, value in saved.items()
             if key in vars(args) and key not in given and key not in PROCESS_FLAGS}
    if "path_dest" not in given:
        taken["path_dest"] = os.path.dirname(os.path.abspath(args.resume))
    try:
        check_loss_flags_belong(dict(vars(args), **taken)["partial_loss_mode"], given)
    except ValueError as error:
        raise ConfigError(f"--resume {args.resume}: {error}") from None
    own = sorted(given - {"resume"})
    print(f"settings: {len(taken)} from {args.resume} (the run's own); given: "
          f"{', '.join('--' + key for key in own) or 'none'}", flush=True)
    return argparse.Namespace(**{**vars(args), **taken})


def check_args(args) -> None:
    if not is_none_path(args.model_path) and args.resume is None:
        require_weights(args.model_path, "--model-path", "file", "download the ImageNet-pretrained weights "
                        "to that path, or pass --model-path none to train from scratch")
    if args.prior_path is not None:
        require_file(args.prior_path, "--prior_path", "file", "pass the CSV written by stage 1 "
                     "(<path_dest>/priors/*.csv) or by python -m src.prior")
    if args.stop_epoch is not None and args.stop_epoch > args.epochs:  # as the paper's loop, but say so
        print(f"note: --stop_epoch {args.stop_epoch} exceeds --epochs {args.epochs}: no early stop, all "
              f"{args.epochs} epochs run", file=sys.stderr)


def resolved_config(args) -> dict:
    return dict(vars(args), do_bottleneck_head=resolve_bottleneck_head(args.do_bottleneck_head,
                                                                       args.dataset_type))


def build_data(args, ctx: DistributedContext) -> DataSplits:
    train_full, eval_set, simulation = build_datasets_with_summary(args)
    if simulation is not None:
        main_print(ctx.is_main, describe_simulation(args.simulate_partial_type, args.simulate_partial_param,
                                                    args.seed, simulation))
    progress = ctx.is_main and sys.stderr.isatty()
    eval_set.verify_decoding(progress)  # small: a bad evaluation image is named before any training
    if args.verify_images == "full":
        train_full.verify_decoding(progress)
    for dataset in (train_full, eval_set):  # OpenImages/LVIS: conflicting, repeated, skipped labels
        if dataset.describe_load_stats() is not None:
            main_print(ctx.is_main, dataset.describe_load_stats())
        if args.cache_images and not dataset.cache_decoded_images():
            main_print(ctx.is_main, f"--cache_images: {dataset.root} does not fit in memory; read from disk")
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
    return DataSplits(train_set, eval_set, selection_set, train_full)


def build_model(args, ctx: DistributedContext) -> torch.nn.Module:
    """The plain model on its device, initialised alike on every rank (pretrained unless resuming)."""
    torch.manual_seed(args.seed)
    model = build_model_from_args(args)
    if not is_none_path(args.model_path) and args.resume is None:
        report = load_pretrained_backbone(model, args.model_path, allow_pickle=args.unsafe_pickle)
        main_print(ctx.is_main, str(report))
    model.to(ctx.device)
    if ctx.distributed and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_model(model, args, ctx: DistributedContext):
    wrapped = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return maybe_compile(wrapped, args.compile, ctx.device)


def build_optimization(model, args, steps_per_epoch: int, amp_dtype, device):
    """Adam (weight decay on weights only, as the paper's add_weight_decay), OneCycleLR per step, scaler."""
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


def build_trainer(args, ctx: DistributedContext, callbacks=(), checkpoint: dict | None = None) -> Trainer:
    """Every part of the run; configuration errors are raised here, before any training step."""
    args = argparse.Namespace(**resolved_config(args))  # what args.json and the checkpoints record
    if args.sync_bn and ctx.device.type != "cuda":
        raise ConfigError(f"--sync_bn needs CUDA devices (SyncBatchNorm has no CPU implementation; device is "
                          f"{ctx.device}); drop --sync_bn")
    amp_dtype = resolve_amp(ctx.device, args.amp, args.amp_dtype)
    seed_everything(args.seed)
    data = build_data(args, ctx)
    criterion = build_criterion(args, data.class_names, num_samples=len(data.train),
                                train_labels=data.train.labels)
    model = build_model(args, ctx)
    ema = ModelEmaV3(model, decay=args.ema_decay)
    train_loader = build_train_loader(data.train, args.batch_size, args.workers, args.seed, ctx.device,
                                      ctx.rank, ctx.world_size)
    optimizer, scheduler, scaler = build_optimization(model, args, len(train_loader), amp_dtype, ctx.device)
    wants_running = args.estimate_prior in ("running_average", "both")
    eval_sets = {"test": data.evaluation, "select": data.selection}
    eval_loaders = {split: build_eval_loader(dataset, args.batch_size, args.workers, ctx.device)
                    for split, dataset in eval_sets.items() if dataset is not None}
    parts = TrainingParts(wrap_model(model, args, ctx), ema, criterion, optimizer, scheduler, scaler,
                          ComputePrior(data.class_names) if wants_running else None)
    trainer = Trainer(parts, data, train_loader, eval_loaders, ctx, args, amp_dtype, callbacks)
    if args.resume is not None:
        trainer.restore(checkpoint or load_training_checkpoint(args.resume, args.unsafe_pickle), args.resume)
    return trainer


def run_config(trainer: Trainer, ctx: DistributedContext) -> dict:
    data = trainer.data
    amp = str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp_dtype else None
    return dict(resolved_device=str(ctx.device), resolved_amp_dtype=amp, world_size=ctx.world_size,
                git_commit=git_commit(), torch_version=torch.__version__, num_train_images=len(data.train),
                num_eval_images=len(data.evaluation),
                num_selection_images=len(data.selection) if data.selection is not None else 0,
                steps_per_epoch=trainer.steps_per_epoch, class_names=data.class_names,
                command=" ".join(sys.argv))


def main(argv=None, callbacks=()) -> dict:
    """Train; returns the run's summary. ``callbacks`` (tests, tools) run after the run's own."""
    parser = build_train_parser()
    args = parser.parse_args(argv)
    checkpoint = None
    if args.resume is not None:
        require_file(args.resume, "--resume", "checkpoint", "pass <path_dest>/last.pth of the run to "
                     "continue")
        refuse_overwriting_the_resumed_run(args.path_dest or os.path.dirname(args.resume), args.resume,
                                           args.overwrite)  # before the checkpoint is even read
        checkpoint = load_training_checkpoint(args.resume, allow_pickle=args.unsafe_pickle)
        args = take_run_settings(args, parser.given, checkpoint)
    check_args(args)
    try:
        ctx = init_distributed(args.device, args.dist_timeout)
    except ValueError as error:  # e.g. --device cuda on a machine without CUDA
        raise ConfigError(str(error)) from error
    trainer = None
    try:
        run_name = f"{args.partial_loss_mode}_{prior_file_stem(args)[len('prior_'):]}"
        folder = resolve_run_folder(args.path_dest, run_name, resume=args.resume, overwrite=args.overwrite,
                                    is_main=ctx.is_main)
        args = argparse.Namespace(**{**vars(args), "path_dest": folder})
        main_print(ctx.is_main, f"run folder: {folder}")
        priors = PriorWriter(args)
        own = [IgnoredRecorder()] if args.record_ignored else []
        try:
            trainer = build_trainer(args, ctx, [*own, priors, ConsoleReport(), *callbacks], checkpoint)
        except (ValueError, FileNotFoundError) as error:  # bad data/prior/checkpoint: before any step
            raise ConfigError(str(error)) from error
        sizes = run_config(trainer, ctx)
        trainer.open_outputs(sizes)
        main_print(ctx.is_main, f"train {sizes['num_train_images']} images, evaluation "
                                f"{sizes['num_eval_images']}, selection {sizes['num_selection_images']}; "
                                f"{ctx.world_size} process(es) on {ctx.device}, AMP "
                                f"{sizes['resolved_amp_dtype'] or 'off'}; model "
                                f"selection: {trainer.protocol}")
        trainer.fit()
        main_print(ctx.is_main, f"run folder: {folder}")
        return {**trainer.summary(), "priors": priors.written}
    finally:
        if trainer is not None:
            trainer.close()
        unlock_folder(args.path_dest)
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="train.py"))
