"""One training run of train.py: the epoch loop, evaluation of the regular and EMA weights, model
selection, checkpoints (``last.pth`` every epoch, ``best.pth`` when the selection metric improves),
``metrics.jsonl``, SIGTERM handling and the class prior written at the end.

train.py builds the parts (data, model, loss, optimizer) from the flags and hands them to
:class:`Trainer`; nothing here reads command-line arguments. Tests and tools observe or interrupt a
run through :class:`Callback` objects (``on_step`` after every optimizer step, ``on_epoch_end`` after
each epoch's checkpoint), not through flags.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from src.data import eval_view
from src.data.transforms import build_val_transform
from src.engine import (
    EpochResult,
    NonFiniteLossError,
    TrainingParts,
    build_eval_loader,
    compute_prior_from_model,
    describe_map,
    evaluate,
    predict,
    scalar_metrics,
    seed_epoch,
    train_one_epoch,
)
from src.models import model_metadata
from src.prior import write_prior_csv
from src.utils.checkpoint import ResumePoint, save_checkpoint
from src.utils.cli import ConfigError, ExitRequest
from src.utils.distributed import (
    DistributedContext,
    all_reduce_sum,
    any_rank_true,
    barrier,
    broadcast_tensors,
    gather_objects,
)
from src.utils.io import save_npz
from src.utils.logging import RunLogger, main_print
from src.utils.seed import capture_rng_state

LOSS_GROWTH_WARNING = 10.0  # a step loss this many times the run's first one: warn (once) of divergence
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a pre-empted job
PAPER_PROTOCOL = "best over epochs on the evaluation set (paper protocol)"
# Settings that shape the training trajectory: a resumed run must use the checkpoint's values.
RESUME_MUST_MATCH = (
    "lr", "epochs", "weight_decay", "model_name", "num_classes", "image_size", "simulate_partial_type",
    "simulate_partial_param", "partial_loss_mode", "clip", "gamma_pos", "gamma_neg", "gamma_unann",
    "alpha_pos", "alpha_neg", "alpha_unann", "likelihood_topk", "prior_threshold", "batch_size", "seed",
    "dataset_type", "partial_labels", "val_split", "ema_decay", "do_bottleneck_head", "amp", "amp_dtype",
    "prior_path", "workers",  # the loss's prior; -j changes how the augmentation RNGs are seeded
    "boostlu_alpha",
)


class TrainingInterrupted(ExitRequest):
    """SIGTERM: last.pth holds the state at the step where the run stopped."""

    exit_code = SIGTERM_EXIT_CODE


class Callback:
    """Hooks into a run; subclass and override what you need (each is a no-op here)."""

    def on_step(self, trainer: Trainer, global_step: int) -> None:
        """After optimizer step ``global_step`` (1-based over the whole run)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """After epoch ``epoch`` (0-based) was evaluated and its checkpoints written."""


class SigtermAtStep(Callback):
    """For tests and tools: a pre-emption notice (a real SIGTERM to this process) after global step
    ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, trainer, global_step):
        if global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


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


@dataclass
class DataSplits:
    """The training images (after any --val_split hold-out), the evaluation set, the held-out selection
    set (or None: the paper's protocol selects on the evaluation set) and the full training set."""

    train: object
    evaluation: object
    selection: object | None
    train_full: object

    @property
    def class_names(self) -> list[str]:
        return list(self.train_full.class_names)


@dataclass
class RunSettings:
    """What the loop needs besides its parts; ``last_epoch`` is the exclusive end (--stop_epoch)."""

    epochs: int
    last_epoch: int
    path_dest: str
    seed: int = 0
    print_freq: int = 64
    threshold: float = 0.5
    image_size: int = 448
    jpeg_draft: bool = True
    batch_size: int = 64
    workers: int = 0
    val_split: float | None = None
    record_ignored: bool = False  # write the entries CSL's top-k ignored in the last epoch (a measurement)
    config: dict = field(default_factory=dict)  # the resolved flags: args.json and the checkpoints


@dataclass
class PriorRequest:
    """Which class priors to write at the end: ``method`` clean / running_average / both / none."""

    method: str = "none"
    folder: str = ""
    stem: str = "prior"


def data_identity(data: DataSplits) -> dict:
    """What identifies the data a run trains and is evaluated on: classes in order, image counts and ids,
    the training labels as trained on (partial) and the evaluation labels."""
    train, evaluation = data.train_full, data.evaluation
    ids = [str(i) for i in train.image_ids]
    return {"class_names": data.class_names, "num_train_images": len(train),
            "num_eval_images": len(evaluation),
            "train_image_ids": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
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


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_resume_compatible(checkpoint: dict, config: dict, ctx: DistributedContext, path: str,
                            data: dict | None = None) -> None:
    """The checkpoint's run was started with the settings ``config`` has (`RESUME_MUST_MATCH`) and, when
    ``data`` (`data_identity`) is given and the checkpoint records it, on the same data."""
    saved = checkpoint["args"]
    differences = [f"--{key}: checkpoint {saved.get(key)!r}, now {config.get(key)!r}"
                   for key in RESUME_MUST_MATCH if saved.get(key) != config.get(key)]
    if data is not None and checkpoint.get("data") is not None:
        differences += _data_differences(checkpoint["data"], data)
    if differences:
        raise ConfigError(f"--resume {path}: the run was started with other settings or data; pass the same "
                          "values and --data (or start a new run):\n  " + "\n  ".join(differences))
    if checkpoint.get("world_size", 1) != ctx.world_size:
        main_print(ctx.is_main, f"warning: resuming a run of {checkpoint.get('world_size')} processes with "
                                f"{ctx.world_size}; the data order, hence the result, will differ")


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


def _finite_or_low(value: float) -> float:
    """NaN (e.g. a partial mAP with every class skipped) never wins the selection."""
    return value if np.isfinite(value) else -float("inf")


class Trainer:
    """:meth:`fit` runs the epochs from ``resume`` on; :meth:`write_priors` writes the requested priors;
    :meth:`summary` returns the result. ``model`` is the plain module, ``parts.model`` its DDP/compiled
    wrapper."""

    def __init__(self, parts: TrainingParts, model: torch.nn.Module, data: DataSplits, train_loader,
                 eval_loaders: dict, ctx: DistributedContext, settings: RunSettings,
                 amp_dtype: torch.dtype | None = None, callbacks=()):
        self.parts, self.model, self.data, self.ctx, self.settings = parts, model, data, ctx, settings
        self.train_loader, self.eval_loaders = train_loader, eval_loaders
        self.amp_dtype, self.callbacks = amp_dtype, list(callbacks)
        self.steps_per_epoch = len(train_loader)
        self.history: list[dict] = []
        self.best = {"metric": -float("inf"), "epoch": None, "variant": None, "test_mAP": None}
        self.resume = ResumePoint()
        self.global_step = 0
        self.first_loss, self.warned_growth = None, False
        self.stop = StopFlag()
        self.held_out = data.selection is not None
        self.selection_split = "select" if self.held_out else "test"
        self.protocol = (f"best epoch selected on a held-out {settings.val_split:.0%} of the training set "
                         "(--val_split)" if self.held_out else PAPER_PROTOCOL)
        self.paths = {"last": os.path.join(settings.path_dest, "last.pth"),
                      "best": os.path.join(settings.path_dest, "best.pth")}
        self.logger: RunLogger | None = None
        self.data_identity = data_identity(data)

    # ---------------------------------------------------------------- state
    def restore(self, checkpoint: dict, path: str) -> None:
        """Continue from the train.py checkpoint ``checkpoint`` (read from ``path``) after checking it."""
        check_resume_compatible(checkpoint, self.settings.config, self.ctx, path, self.data_identity)
        parts = self.parts
        self.model.load_state_dict(checkpoint["model"])
        parts.ema.module.load_state_dict(checkpoint["ema"])
        parts.optimizer.load_state_dict(checkpoint["optimizer"])
        parts.scheduler.load_state_dict(checkpoint["scheduler"])
        parts.scaler.load_state_dict(checkpoint["scaler"])
        parts.criterion.load_state_dict(checkpoint.get("criterion", {}))  # label stores of ll_cp / em_apl
        prior_state = checkpoint.get("train_prior")
        # Rank 0 takes the global sums, the other ranks start from zero: the final reduce counts each once.
        if parts.train_prior is not None and prior_state is not None and self.ctx.is_main:
            parts.train_prior.load_state_dict(prior_state)
        self.history, self.best = list(checkpoint["history"]), dict(checkpoint["best"])
        self.resume = ResumePoint.from_checkpoint(checkpoint, self.steps_per_epoch)
        main_print(self.ctx.is_main, f"resumed: epoch {self.resume.epoch + 1}, step {self.resume.steps_done}")

    def state(self, epoch: int, steps_done: int, loss_sum: float, prior_state) -> dict:
        parts = self.parts
        return {
            "model": self.model.state_dict(), "ema": parts.ema.module.state_dict(),
            **model_metadata(self.model), "class_names": self.data.class_names,
            "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(), "criterion": parts.criterion.state_dict(), "epoch": epoch,
            "steps_done": steps_done,
            "epoch_loss_sum": loss_sum, "rng_state": capture_rng_state(), "history": list(self.history),
            "best": dict(self.best), "args": dict(self.settings.config), "world_size": self.ctx.world_size,
            "train_prior": prior_state, "data": self.data_identity,
        }

    def save(self, name: str, epoch: int, steps_done: int, loss_sum: float, override: dict | None = None):
        prior = self.parts.train_prior
        prior_state = prior.reduced_state_dict() if prior is not None else None  # a collective: all ranks
        if not self.ctx.is_main:
            return
        state = self.state(epoch, steps_done, loss_sum, prior_state)
        state.update(override or {})
        save_checkpoint(state, self.paths[name])

    # ---------------------------------------------------------------- loop
    def open_outputs(self, extra_config: dict) -> None:
        """args.json (the flags plus ``extra_config``), metrics.jsonl (reset to the resumed history)."""
        self.logger = RunLogger(self.settings.path_dest, enabled=self.ctx.is_main)
        self.logger.write_args({**self.settings.config, **extra_config, "selection_protocol": self.protocol})
        if self.history:
            self.logger.reset_history(self.history)

    def _on_step(self, step: int, loss_value: float, lr: float) -> None:
        self.global_step += 1
        self._watch_loss(loss_value, lr)
        if step % self.settings.print_freq == 0 and self.logger is not None:
            self.logger.log_step("train/loss", loss_value, self.global_step)
            self.logger.log_step("train/lr", lr, self.global_step)
        for callback in self.callbacks:
            callback.on_step(self, self.global_step)

    def _watch_loss(self, loss_value: float, lr: float) -> None:
        if self.first_loss is None:
            self.first_loss = loss_value
        elif not self.warned_growth and loss_value > LOSS_GROWTH_WARNING * abs(self.first_loss):
            self.warned_growth = True
            main_print(self.ctx.is_main,
                       f"warning: the loss grew to {loss_value:.4g} at step {self.global_step}, over "
                       f"{LOSS_GROWTH_WARNING:g}x its first value {self.first_loss:.4g}: training may be "
                       f"diverging; consider a lower --lr (now {lr:.3g} at this step)")

    def check_finite_weights(self, epoch: int) -> None:
        """Non-finite weights (regular or EMA) stop the run before anything of them is saved."""
        for variant, net in (("regular", self.model), ("ema", self.parts.ema.module)):
            bad = [name for name, tensor in net.state_dict().items()
                   if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
            if bad:
                raise NonFiniteLossError(
                    f"training diverged: the {variant} weights hold NaN or inf after epoch {epoch + 1} "
                    f"(first: {bad[0]}; {len(bad)} tensors); no checkpoint of this epoch was saved. Lower "
                    "--lr; with --amp and float16 try --amp_dtype bfloat16 or --no-amp")

    def stop_requested(self) -> bool:
        return any_rank_true(self.stop.requested, self.ctx.device)

    def train_epoch(self, epoch: int) -> EpochResult:
        seed_epoch(self.train_loader, self.settings.seed, epoch, self.ctx.rank)
        return train_one_epoch(
            self.parts, self.train_loader, device=self.ctx.device, epoch=epoch,
            num_epochs=self.settings.epochs, amp_dtype=self.amp_dtype, resume=self.resume.within(epoch),
            print_freq=self.settings.print_freq,
            should_stop=self.stop_requested, on_step=self._on_step,
            show_progress=self.ctx.is_main and sys.stderr.isatty())

    def sync_ranks(self) -> None:
        """Give every rank rank 0's buffers and EMA state, the state that is evaluated and saved."""
        broadcast_tensors(list(self.model.buffers()))
        broadcast_tensors(list(self.parts.ema.module.state_dict().values()))

    def evaluate_epoch(self) -> dict:
        """{(split, variant): metrics} for split in the loaders ('test', 'select'), variant regular/ema."""
        results = {}
        models = {"regular": self.parts.model, "ema": self.parts.ema.module}
        for split, loader in self.eval_loaders.items():  # one pass per split: each batch decoded once
            metrics = evaluate(models, loader, self.ctx.device, amp_dtype=self.amp_dtype,
                                    threshold=self.settings.threshold)
            results.update({(split, variant): metrics[variant] for variant in models})
        return results

    def training_pass(self, epoch: int) -> None:
        """Losses that relabel from the model's predictions on the training set (em_apl) get them after
        the epoch, before the checkpoint (so a resumed run has the same labels): eval mode, no
        augmentation, dataset order, every rank (the loss's update is a collective)."""
        criterion, settings = self.parts.criterion, self.settings
        wants = getattr(criterion, "wants_training_pass", None)
        if wants is None or not wants(epoch + 1, settings.epochs):
            return
        view = eval_view(self.data.train, build_val_transform(settings.image_size, draft=settings.jpeg_draft))
        loader = build_eval_loader(view, settings.batch_size, settings.workers, self.ctx.device)
        targets, scores = predict(self.parts.model, loader, self.ctx.device, amp_dtype=self.amp_dtype)
        labelled = criterion.update_from_training_pass(torch.from_numpy(scores), torch.from_numpy(targets)
                                                       .float(), epoch + 1, settings.epochs)
        main_print(self.ctx.is_main, f"  pseudo-labelling pass over the {len(view)} training images: "
                                     f"{labelled} entries labelled")

    def end_epoch(self, epoch: int, result: EpochResult, started: float) -> None:
        self.sync_ranks()
        self.check_finite_weights(epoch)
        self.training_pass(epoch)
        totals = all_reduce_sum(torch.tensor([result.loss_sum, result.steps_done], dtype=torch.float64))
        mean_loss = float(totals[0] / totals[1])
        results = self.evaluate_epoch()
        record = epoch_record(epoch, result, mean_loss, self.parts.scheduler.get_last_lr()[0], results,
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
        self.print_epoch(epoch, mean_loss, results, record)
        if is_best:
            selected = self.parts.ema.module if self.best["variant"] == "ema" else self.model
            self.save("best", epoch, result.steps_done, result.loss_sum,
                      {"model": selected.state_dict(), "selected_variant": self.best["variant"]})
        self.save("last", epoch, result.steps_done, result.loss_sum)

    def fit(self) -> None:
        """Train from the resume point to ``settings.last_epoch``; SIGTERM ends it with last.pth saved."""
        self.global_step = self.resume.epoch * self.steps_per_epoch + self.resume.steps_done
        self.stop.install()
        try:
            for epoch in range(self.resume.epoch, self.settings.last_epoch):
                started = time.perf_counter()
                recording = self._start_recording(epoch)
                result = self.train_epoch(epoch)
                self._write_recording(recording)
                if result.interrupted:
                    self.sync_ranks()
                    self.save("last", epoch, result.steps_done, result.loss_sum)
                    raise TrainingInterrupted(
                        f"SIGTERM: saved {self.paths['last']} at epoch {epoch + 1}, step "
                        f"{result.steps_done}/{self.steps_per_epoch}; continue with --resume")
                self.end_epoch(epoch, result, started)
                for callback in self.callbacks:
                    callback.on_epoch_end(self, epoch)
                if self.stop_requested():
                    raise TrainingInterrupted(f"SIGTERM: saved {self.paths['last']} after epoch {epoch + 1}; "
                                              "continue with --resume")
            barrier()
        finally:
            self.stop.restore()

    IGNORED_FILE = "ignored_last_epoch.npz"

    def _start_recording(self, epoch: int) -> list | None:
        """In the last epoch with ``settings.record_ignored``: collect what the loss's top-k ignores."""
        criterion = self.parts.criterion
        if not self.settings.record_ignored or epoch != self.settings.last_epoch - 1 \
                or not hasattr(criterion, "record_ignored"):
            return None
        entries = []
        criterion.record_ignored(lambda samples, classes: entries.append(torch.stack([samples, classes], 1)))
        return entries

    def _write_recording(self, entries: list | None) -> None:
        """``<path_dest>/ignored_last_epoch.npz``: image ids and class indices of every ignored entry of the
        epoch (all ranks), for the mechanism analysis of src.reproduce.mechanism."""
        if entries is None:
            return
        self.parts.criterion.record_ignored(None)
        local = torch.cat(entries).numpy() if entries else np.zeros((0, 2), dtype=np.int64)
        pairs = np.concatenate(gather_objects(local))
        if self.ctx.is_main:
            ids = np.asarray(self.data.train.image_ids)
            path = os.path.join(self.settings.path_dest, self.IGNORED_FILE)
            save_npz(path, image_ids=ids[pairs[:, 0]], classes=pairs[:, 1],
                     class_names=np.asarray(self.data.class_names))

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    # ---------------------------------------------------------------- report
    def print_epoch(self, epoch, mean_loss, results, record) -> None:
        if not self.ctx.is_main:
            return
        best = self.best
        remaining = self.settings.last_epoch - epoch - 1
        recent = [r["time_s"] for r in self.history[-3:]]  # the last epochs' pace (this process included)
        left = f", about {format_duration(remaining * sum(recent) / len(recent))} left" if remaining else ""
        lines = [f"epoch {epoch + 1}/{self.settings.epochs}: loss {mean_loss:.2f}, {record['time_s']:.1f}s "
                 f"per epoch{left}"]
        names = {"test": "evaluation set", "select": "selection split (held out from training)"}
        for (split, variant), metrics in results.items():
            lines.append(f"  {names[split]}, {variant}: {describe_map(metrics)}, CF1 {metrics['CF1']:.2f}, "
                         f"OF1 {metrics['OF1']:.2f}")
        lines.append(f"  best epoch so far: {best['epoch'] + 1} ({best['variant']}), selection mAP "
                     f"{best['metric']:.2f}, evaluation-set mAP {best['test_mAP']:.2f} [{self.protocol}]")
        print("\n".join(lines), flush=True)

    def final_summary(self) -> str:
        best = self.best
        if best["epoch"] is None:
            return "no epoch finished"
        if self.held_out:
            return (f"done. Best epoch {best['epoch'] + 1} ({best['variant']} weights) chosen on the "
                    f"held-out split (mAP {best['metric']:.2f}); evaluation-set mAP at that epoch: "
                    f"{best['test_mAP']:.2f}")
        return (f"done. Highest evaluation-set mAP {best['test_mAP']:.2f} at epoch {best['epoch'] + 1} "
                f"({best['variant']} weights) - {self.protocol}")

    def summary(self, priors: list[str]) -> dict:
        main_print(self.ctx.is_main, self.final_summary())
        return {"best_epoch": self.best["epoch"], "best_selection_mAP": self.best["metric"],
                "best_test_mAP": self.best["test_mAP"], "best_variant": self.best["variant"],
                "selection_protocol": self.protocol, "priors": priors, "history": self.history,
                "checkpoints": dict(self.paths)}

    # ---------------------------------------------------------------- prior
    def clean_pass_prior(self) -> np.ndarray | None:
        """Mean sigmoid output of the best checkpoint over the training images, eval mode, no augmentation
        (None when there is no best.pth, e.g. a finished run resumed into a new --path_dest)."""
        barrier()  # rank 0 has written best.pth
        if not os.path.isfile(self.paths["best"]):
            main_print(self.ctx.is_main, f"no {self.paths['best']}: clean-pass prior not estimated; run "
                                         "python -m src.prior on the run's best.pth")
            return None
        net = self.parts.ema.module  # free after training: reuse it to hold the best weights
        net.load_state_dict(torch.load(self.paths["best"], map_location="cpu", weights_only=True)["model"])
        settings = self.settings
        transform = build_val_transform(settings.image_size, draft=settings.jpeg_draft)
        view = eval_view(self.data.train_full, transform)
        return compute_prior_from_model(net, view, self.ctx.device, batch_size=settings.batch_size,
                                        workers=settings.workers, amp_dtype=self.amp_dtype)

    def write_priors(self, request: PriorRequest) -> list[str]:
        """Write the requested prior CSVs (clean pass with the best model, and/or running average)."""
        estimates = {}
        if request.method in ("clean", "both"):
            estimates[f"{request.stem}.csv"] = self.clean_pass_prior()
        running = self.parts.train_prior
        if request.method in ("running_average", "both") and running is not None:
            running.all_reduce()
            estimates[f"{request.stem}_running_average.csv"] = running.avg_pred_train.cpu().numpy()
        written = []
        for name, values in estimates.items():
            if values is not None and self.ctx.is_main:
                path = os.path.join(request.folder, name)
                written.append(write_prior_csv(path, self.data.class_names, values))
                print(f"class prior written to {written[-1]}", flush=True)
        return written
