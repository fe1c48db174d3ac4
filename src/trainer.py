"""One training run of train.py: the epoch loop, evaluation of the regular and EMA weights, model
selection, checkpoints, ``metrics.jsonl`` and SIGTERM. The rest of a run is `src.callbacks.Callback`
objects. Epochs count from 1 in every output; only the engine takes the 0-based index.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from src.data import eval_view
from src.data.image_io import ImageReadError
from src.data.transforms import build_val_transform
from src.engine import (
    EpochResult,
    NonFiniteLossError,
    TrainingParts,
    build_eval_loader,
    evaluate,
    predict,
    seed_epoch,
    train_one_epoch,
)
from src.loss_functions import LOSS_HYPERPARAMETERS, LOSS_SETTING_NAMES, LOSS_SETTINGS
from src.metrics import THRESHOLD_METRIC_KEYS
from src.models import model_metadata
from src.utils.checkpoint import CheckpointError, ResumePoint
from src.utils.cli import ConfigError, ExitRequest
from src.utils.distributed import (
    DistributedContext,
    all_reduce_sum,
    any_rank_true,
    barrier,
    broadcast_tensors,
    unwrap_model,
)
from src.utils.io import atomic_torch_save
from src.utils.logging import RunLogger, main_print
from src.utils.seed import capture_rng_state

LOSS_GROWTH_WARNING = 10.0  # a step loss this many times the run's first one: warn (once) of divergence
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a pre-empted job
# Signals that stop a run at the next step boundary with last.pth saved: their name and exit status.
STOP_SIGNALS = {signal.SIGTERM: ("SIGTERM", SIGTERM_EXIT_CODE), signal.SIGINT: ("Ctrl-C (SIGINT)", 130)}
PAPER_PROTOCOL = "best over epochs on the evaluation set (paper protocol)"
SCALAR_METRIC_KEYS = ("mAP", *THRESHOLD_METRIC_KEYS, "num_classes_skipped")  # metrics.jsonl, per split
CHECKPOINT_FORMAT = 2  # 2: epochs counted from 1 (``epoch``, ``best``, ``history``); before: from 0
# Settings that shape the training trajectory: a resumed run must use the checkpoint's values. Every loss
# setting comes from the loss table; -j changes how the augmentation RNGs are seeded.
RESUME_MUST_MATCH = (
    "lr", "epochs", "weight_decay", "model_name", "num_classes", "image_size", "simulate_partial_type",
    "simulate_partial_param", "batch_size", "seed", "dataset_type", "partial_labels", "val_split",
    "ema_decay", "do_bottleneck_head", "amp", "amp_dtype", "workers", "boostlu_alpha",
    "output_stride",
    *LOSS_SETTING_NAMES,
)
# What a checkpoint written before a loss flag existed ran with: that flag's default.
LOSS_DEFAULTS = {name: entry.flag_default
                 for name, entry in {**LOSS_SETTINGS, **LOSS_HYPERPARAMETERS}.items()}


class TrainingInterrupted(ExitRequest):
    """SIGTERM or Ctrl-C: last.pth holds the state at the step where the run stopped."""

    exit_code = SIGTERM_EXIT_CODE

    def __init__(self, message: str, exit_code: int = SIGTERM_EXIT_CODE):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class DataSplits:
    """``train``: after any --val_split hold-out; ``selection``: None selects on the evaluation set."""

    train: object
    evaluation: object
    selection: object | None
    train_full: object

    @property
    def class_names(self) -> list[str]:
        return list(self.train_full.class_names)


def last_epoch(epochs: int, stop_epoch: int | None) -> int:
    """--stop_epoch ends a run early, never late (as the paper's loop)."""
    return epochs if stop_epoch is None else min(stop_epoch, epochs)


def data_identity(data: DataSplits) -> dict:
    """Classes in order, image counts and ids, the (partial) training labels and the evaluation labels."""
    train, evaluation = data.train_full, data.evaluation
    ids = "\n".join(str(i) for i in train.image_ids)
    return {"class_names": data.class_names, "num_train_images": len(train),
            "num_eval_images": len(evaluation),
            "train_image_ids": hashlib.sha256(ids.encode()).hexdigest()[:16],
            "train_labels": train.labels.fingerprint()[:16],
            "eval_labels": evaluation.labels.fingerprint()[:16]}


def _data_differences(saved: dict, current: dict) -> list[str]:
    differences = []
    if saved["class_names"] != current["class_names"]:
        same_set = sorted(saved["class_names"]) == sorted(current["class_names"])
        differences.append("class names: " + ("the same classes in another order" if same_set else
                                              f"{len(saved['class_names'])} in the checkpoint, "
                                              f"{len(current['class_names'])} now, or other names"))
    for key, what in (("num_train_images", "training images"), ("num_eval_images", "evaluation images"),
                      ("train_image_ids", "training image ids"), ("train_labels", "training labels"),
                      ("eval_labels", "evaluation labels")):
        if saved.get(key) != current[key]:
            differences.append(f"{what}: checkpoint {saved.get(key)}, now {current[key]}")
    return differences


def check_resume_compatible(checkpoint: dict, config: dict, ctx: DistributedContext, path: str,
                            data: dict | None = None) -> None:
    """Refuse a checkpoint started with other `RESUME_MUST_MATCH` settings or (when both record it) data."""
    saved = checkpoint["args"]
    differences = [f"--{key}: checkpoint {saved.get(key, LOSS_DEFAULTS.get(key))!r}, now {config.get(key)!r}"
                   for key in RESUME_MUST_MATCH if saved.get(key, LOSS_DEFAULTS.get(key)) != config.get(key)]
    if data is not None and checkpoint.get("data") is not None:
        differences += _data_differences(checkpoint["data"], data)
    if differences:
        raise ConfigError(f"--resume {path}: the run was started with other settings or data; pass the same "
                          "values and --data (or start a new run):\n  " + "\n  ".join(differences))
    if checkpoint.get("world_size", 1) != ctx.world_size:
        main_print(ctx.is_main, f"warning: resuming a run of {checkpoint.get('world_size')} processes with "
                                f"{ctx.world_size}; the data order, hence the result, will differ")


def count_epochs_from_one(checkpoint: dict) -> dict:
    """``checkpoint`` with its epochs counted from 1 (before `CHECKPOINT_FORMAT` 2 they counted from 0)."""
    if checkpoint.get("format_version", 1) >= CHECKPOINT_FORMAT:
        return checkpoint

    def shift(epoch):
        return None if epoch is None else epoch + 1

    history = [dict(record, epoch=record["epoch"] + 1, best_epoch=shift(record.get("best_epoch")))
               for record in checkpoint["history"]]
    best = dict(checkpoint["best"], epoch=shift(checkpoint["best"]["epoch"]))
    return {**checkpoint, "epoch": checkpoint["epoch"] + 1, "history": history, "best": best,
            "format_version": CHECKPOINT_FORMAT}


def epoch_record(epoch, result: EpochResult, mean_loss, lr, results, selection_split, seconds) -> dict:
    record = {"epoch": epoch, "loss": mean_loss, "lr": lr, "steps": result.steps_done, "time_s": seconds,
              "train_time_s": result.seconds}
    for (split, variant), metrics in results.items():
        record.update({f"{split}_{variant}_{key}": metrics[key]
                       for key in SCALAR_METRIC_KEYS if key in metrics})
        record[f"{split}_partial"] = metrics["partial"]
    # NaN (e.g. a partial mAP with every class skipped) never wins the selection.
    regular, ema = (results[(selection_split, variant)]["mAP"] for variant in ("regular", "ema"))
    regular, ema = (value if np.isfinite(value) else -float("inf") for value in (regular, ema))
    record.update(selection_variant="ema" if ema > regular else "regular", selection_mAP=max(regular, ema),
                  selection_split=selection_split)
    return record


class Trainer:
    """:meth:`fit` runs the epochs from the resume point (:meth:`restore`) on. ``parts.model`` is the model
    as trained (DDP/compiled wrapper or plain), ``self.model`` the plain module whose weights are saved."""

    def __init__(self, parts: TrainingParts, data: DataSplits, train_loader, eval_loaders: dict,
                 ctx: DistributedContext, args, amp_dtype: torch.dtype | None = None, callbacks=()):
        self.parts, self.data, self.ctx, self.args, self.amp_dtype = parts, data, ctx, args, amp_dtype
        self.model = unwrap_model(parts.model)
        self.train_loader, self.eval_loaders, self.callbacks = train_loader, eval_loaders, list(callbacks)
        self.steps_per_epoch = len(train_loader)
        self.last_epoch = last_epoch(args.epochs, args.stop_epoch)
        self.history: list[dict] = []
        self.evaluation: dict = {}  # the last epoch's {(split, variant): metrics}
        self.best = {"metric": -float("inf"), "epoch": None, "variant": None, "test_mAP": None}
        self.resume = ResumePoint()  # its ``epoch`` is the engine's 0-based index
        self.global_step = 0
        self.first_loss, self.warned_growth, self.stop_signal = None, False, None
        self.held_out = data.selection is not None
        self.selection_split = "select" if self.held_out else "test"
        self.protocol = (f"best epoch selected on a held-out {args.val_split:.0%} of the training set "
                         "(--val_split)" if self.held_out else PAPER_PROTOCOL)
        self.paths = {name: os.path.join(args.path_dest, f"{name}.pth") for name in ("last", "best")}
        self.logger: RunLogger | None = None
        self.data_identity = data_identity(data)

    def restore(self, checkpoint: dict, path: str) -> None:
        check_resume_compatible(checkpoint, vars(self.args), self.ctx, path, self.data_identity)
        checkpoint = count_epochs_from_one(checkpoint)
        epoch, steps = checkpoint["epoch"], checkpoint["steps_done"]
        if not (isinstance(epoch, int) and isinstance(steps, int) and 1 <= epoch <= self.args.epochs
                and steps >= 0):
            raise CheckpointError(f"--resume {path}: epoch {epoch!r}, step {steps!r} is not a point of a run "
                                  f"of {self.args.epochs} epochs; the file is damaged or edited: resume from "
                                  "the last.pth the run wrote")
        parts = self.parts
        # A state that does not fit (another head, other parameter groups): torch's text, the file named.
        for what, target, state in (
                ("model", self.model, checkpoint["model"]), ("ema", parts.ema.module, checkpoint["ema"]),
                ("optimizer", parts.optimizer, checkpoint["optimizer"]),
                ("scheduler", parts.scheduler, checkpoint["scheduler"]),
                ("scaler", parts.scaler, checkpoint["scaler"]),
                ("criterion", parts.criterion, checkpoint.get("criterion", {}))):  # label stores
            try:
                target.load_state_dict(state)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
                reason = " ".join(str(error).split())[:400]
                raise CheckpointError(f"--resume {path}: its {what} state does not fit this run ({reason}); "
                                      "resume from the last.pth of a run with these settings") from None
        prior_state = checkpoint.get("train_prior")
        # Rank 0 takes the global sums, the other ranks start from zero: the final reduce counts each once.
        if parts.train_prior is not None and prior_state is not None and self.ctx.is_main:
            parts.train_prior.load_state_dict(prior_state)
        self.history, self.best = list(checkpoint["history"]), dict(checkpoint["best"])
        self.resume = ResumePoint.from_checkpoint({**checkpoint, "epoch": epoch - 1}, self.steps_per_epoch)
        main_print(self.ctx.is_main, f"resumed: epoch {self.resume.epoch + 1}, step {self.resume.steps_done}")

    def save(self, name: str, epoch: int, result: EpochResult, override: dict | None = None) -> None:
        parts = self.parts
        prior_state = parts.train_prior.reduced_state_dict() if parts.train_prior is not None else None
        if not self.ctx.is_main:  # the reduce above is a collective: all ranks get here
            return
        state = {
            "model": self.model.state_dict(), "ema": parts.ema.module.state_dict(),
            **model_metadata(self.model), "class_names": self.data.class_names,
            "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(), "criterion": parts.criterion.state_dict(),
            "format_version": CHECKPOINT_FORMAT, "epoch": epoch, "steps_done": result.steps_done,
            "epoch_loss_sum": result.loss_sum, "rng_state": capture_rng_state(),
            "history": list(self.history),
            "best": dict(self.best), "args": dict(vars(self.args)), "world_size": self.ctx.world_size,
            "train_prior": prior_state, "data": self.data_identity,
        }
        atomic_torch_save({**state, **(override or {})}, self.paths[name])

    def open_outputs(self, extra_config: dict) -> None:
        self.logger = RunLogger(self.args.path_dest, enabled=self.ctx.is_main)
        self.logger.write_args({**vars(self.args), **extra_config, "selection_protocol": self.protocol})
        if self.history:
            self.logger.reset_history(self.history)

    def _on_step(self, step: int, loss_value: float, lr: float) -> None:
        self.global_step += 1
        if self.first_loss is None:
            self.first_loss = loss_value
        elif not self.warned_growth and loss_value > LOSS_GROWTH_WARNING * abs(self.first_loss):
            self.warned_growth = True
            main_print(self.ctx.is_main,
                       f"warning: the loss grew to {loss_value:.4g} at step {self.global_step}, over "
                       f"{LOSS_GROWTH_WARNING:g}x its first value {self.first_loss:.4g}: training may be "
                       f"diverging; consider a lower --lr (now {lr:.3g} at this step)")
        if step % self.args.print_freq == 0 and self.logger is not None:
            self.logger.log_step("train/loss", loss_value, self.global_step)
            self.logger.log_step("train/lr", lr, self.global_step)
        self._call("on_step", self.global_step)

    def check_finite_weights(self, epoch: int) -> None:
        for variant, net in (("regular", self.model), ("ema", self.parts.ema.module)):
            bad = [name for name, tensor in net.state_dict().items()
                   if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
            if bad:
                raise NonFiniteLossError(
                    f"training diverged: the {variant} weights hold NaN or inf after epoch {epoch} "
                    f"(first: {bad[0]}; {len(bad)} tensors); no checkpoint of this epoch was saved. Lower "
                    "--lr; with --amp and float16 try --amp_dtype bfloat16 or --no-amp")

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum  # polled at step boundaries (a signal handler does no I/O)

    def stop_requested(self) -> bool:
        return any_rank_true(self.stop_signal is not None, self.ctx.device)

    def interrupted(self, where: str) -> TrainingInterrupted:
        name, code = STOP_SIGNALS.get(self.stop_signal, STOP_SIGNALS[signal.SIGTERM])  # another rank's
        return TrainingInterrupted(f"{name}: saved {self.paths['last']} {where}; continue with --resume",
                                   code)

    def train_epoch(self, epoch: int) -> EpochResult:
        index = epoch - 1  # the engine's data order and augmentation seeds are those of the 0-based index
        seed_epoch(self.train_loader, self.args.seed, index, self.ctx.rank)
        return train_one_epoch(
            self.parts, self.train_loader, device=self.ctx.device, epoch=index, num_epochs=self.args.epochs,
            amp_dtype=self.amp_dtype, resume=self.resume.within(index), print_freq=self.args.print_freq,
            should_stop=self.stop_requested, on_step=self._on_step,
            show_progress=self.ctx.is_main and sys.stderr.isatty())

    def sync_ranks(self) -> None:
        # Every rank gets rank 0's buffers and EMA state: those are evaluated and saved.
        broadcast_tensors(list(self.model.buffers()))
        broadcast_tensors(list(self.parts.ema.module.state_dict().values()))

    def evaluate_epoch(self) -> dict:
        # {(split, variant): metrics}; one pass per split: each batch is decoded once for both variants
        results = {}
        models = {"regular": self.parts.model, "ema": self.parts.ema.module}
        for split, loader in self.eval_loaders.items():
            metrics = evaluate(models, loader, self.ctx.device, amp_dtype=self.amp_dtype,
                                threshold=self.args.thre)
            results.update({(split, variant): metrics[variant] for variant in models})
        return results

    def training_pass(self, epoch: int) -> None:
        """em_apl relabels from predictions on the training set (eval mode, no augmentation) after the
        epoch, before the checkpoint, so a resumed run has the same labels; a collective."""
        criterion, args = self.parts.criterion, self.args
        wants = getattr(criterion, "wants_training_pass", None)
        if wants is None or not wants(epoch, args.epochs):
            return
        view = eval_view(self.data.train, build_val_transform(args.image_size, draft=args.jpeg_draft))
        loader = build_eval_loader(view, args.batch_size, args.workers, self.ctx.device)
        targets, scores = predict(self.parts.model, loader, self.ctx.device, amp_dtype=self.amp_dtype)
        labelled = criterion.update_from_training_pass(torch.from_numpy(scores), torch.from_numpy(targets)
                                                       .float(), epoch, args.epochs)
        main_print(self.ctx.is_main, f"  pseudo-labelling pass over the {len(view)} training images: "
                                     f"{labelled} entries labelled")

    def end_epoch(self, epoch: int, result: EpochResult, started: float) -> None:
        self.sync_ranks()
        self.check_finite_weights(epoch)
        # Resumed from, this checkpoint re-runs the end of the epoch: a failed evaluation costs no training.
        self.save("last", epoch, result, {"evaluation_pending": True})
        self.training_pass(epoch)
        skipped = getattr(self.data.train, "skipped_reads", None)  # shared with the loader's workers
        totals = all_reduce_sum(torch.tensor([result.loss_sum, result.steps_done,
                                              0 if skipped is None else int(skipped)], dtype=torch.float64))
        if totals[2]:
            skipped.zero_()
            main_print(self.ctx.is_main, f"  {int(totals[2])} training images could not be decoded in epoch "
                                         f"{epoch}; each was replaced by the next readable one "
                                         "(--skip_bad_images; the warnings name the files)")
        self.evaluation = results = self.evaluate_epoch()
        lr = self.parts.scheduler.get_last_lr()[0]
        record = epoch_record(epoch, result, float(totals[0] / totals[1]), lr, results, self.selection_split,
                              time.perf_counter() - started)
        is_best = record["selection_mAP"] > self.best["metric"]
        if is_best:
            variant = record["selection_variant"]
            self.best = {"metric": record["selection_mAP"], "epoch": epoch, "variant": variant,
                         "test_mAP": results[("test", variant)]["mAP"]}
        record.update(best_epoch=self.best["epoch"], best_selection_mAP=self.best["metric"],
                      best_test_mAP=self.best["test_mAP"])
        self.history.append(record)
        self.logger.log_epoch(record)
        if is_best:
            selected = self.parts.ema.module if self.best["variant"] == "ema" else self.model
            self.save("best", epoch, result, {"model": selected.state_dict(), "selected_variant": variant})
        self.save("last", epoch, result)

    def fit(self) -> None:
        """SIGTERM or Ctrl-C ends the run with last.pth saved (and no ``on_train_end``), as does an image
        that fails to decode mid-epoch; a process group that stops answering ends it after --dist_timeout."""
        self.global_step = self.resume.epoch * self.steps_per_epoch + self.resume.steps_done
        previous = {}
        for signum in STOP_SIGNALS:
            try:
                previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread (e.g. a test runner's thread): no handler
                pass
        try:
            for epoch in range(self.resume.epoch + 1, self.last_epoch + 1):
                started = time.perf_counter()
                self._call("on_epoch_start", epoch)
                result = self.train_epoch(epoch)
                if result.failure is not None and self.ctx.distributed:
                    raise result.failure  # the other ranks wait in a collective: no checkpoint to gather
                if result.interrupted:
                    self.sync_ranks()
                    self.save("last", epoch, result)
                    where = f"at epoch {epoch}, step {result.steps_done}/{self.steps_per_epoch}"
                    if result.failure is not None:
                        raise ConfigError(f"{result.failure} (saved {self.paths['last']} {where}; once the "
                                          "file is replaced, or with --skip_bad_images, continue with "
                                          "--resume)")
                    raise self.interrupted(where)
                self.end_epoch(epoch, result, started)
                self._call("on_epoch_end", epoch)
                if self.stop_requested():
                    raise self.interrupted(f"after epoch {epoch}")
            barrier()
        except ImageReadError as error:  # in the evaluation or pseudo-labelling pass: last.pth is saved
            raise ConfigError(f"{error} ({self.paths['last']} holds every trained epoch; once the file is "
                              "replaced, continue with --resume)") from None
        except RuntimeError as error:  # a collective's timeout or lost peer: one line, not a traceback
            if not (isinstance(error, torch.distributed.DistError) or "gloo" in str(error)):
                raise
            reason = " ".join(str(error).split())[:300]
            timeout = getattr(self.args, "dist_timeout", None)
            raise ExitRequest(f"rank {self.ctx.rank}: another process stopped answering or ended ({reason}); "
                              f"the job ends (--dist_timeout {timeout} s); continue with --resume "
                              f"{self.paths['last']}") from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self._call("on_train_end")

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    def summary(self) -> dict:
        return {"best_epoch": self.best["epoch"], "best_selection_mAP": self.best["metric"],
                "best_test_mAP": self.best["test_mAP"], "best_variant": self.best["variant"],
                "selection_protocol": self.protocol, "history": self.history, "checkpoints": dict(self.paths)}
