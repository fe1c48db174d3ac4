"""What a training run does besides its epoch loop, as :class:`Callback` objects that `src.trainer.Trainer`
calls: the console report, the record of what CSL's top-k ignored, the priors, a pre-emption for tests.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import torch

from src.data import eval_view
from src.data.transforms import build_val_transform
from src.engine import compute_prior_from_model, describe_map
from src.prior import prior_file_stem, write_prior_csv
from src.trainer import STOP_SIGNALS, TrainingInterrupted
from src.utils.checkpoint import load_training_checkpoint
from src.utils.distributed import barrier, gather_objects
from src.utils.io import save_npz
from src.utils.logging import format_duration, main_print

IGNORED_FILE = "ignored_last_epoch.npz"


class Callback:
    """Hooks into a run (each a no-op here), called on every rank (collectives are allowed)."""

    def on_epoch_start(self, trainer, epoch: int) -> None:
        """Before the training steps of epoch ``epoch``."""

    def on_step(self, trainer, global_step: int) -> None:
        """After optimizer step ``global_step`` (1-based over the whole run)."""

    def on_epoch_end(self, trainer, epoch: int) -> None:
        """After epoch ``epoch`` was evaluated (``trainer.history[-1]``) and its checkpoints written."""

    def on_train_end(self, trainer) -> None:
        """After the last epoch (not after a SIGTERM)."""


class SigtermAtStep(Callback):
    """For tests and tools: a real SIGTERM to this process after global step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, trainer, global_step):
        if global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class ConsoleReport(Callback):
    """Rank 0 prints each epoch's loss, pace, metrics and the best epoch so far, and the result at the end."""

    def on_epoch_end(self, trainer, epoch):
        if not trainer.ctx.is_main:
            return
        record, best = trainer.history[-1], trainer.best
        remaining = trainer.last_epoch - epoch
        recent = [r["time_s"] for r in trainer.history[-3:]]  # the last epochs' pace (this process included)
        left = f", about {format_duration(remaining * sum(recent) / len(recent))} left" if remaining else ""
        lines = [f"epoch {epoch}/{trainer.args.epochs}: loss {record['loss']:.2f}, "
                 f"{record['time_s']:.1f}s per epoch{left}"]
        names = {"test": "evaluation set", "select": "selection split (held out from training)"}
        for (split, variant), metrics in trainer.evaluation.items():
            lines.append(f"  {names[split]}, {variant}: {describe_map(metrics)}, CF1 {metrics['CF1']:.2f}, "
                         f"OF1 {metrics['OF1']:.2f}")
        lines.append(f"  best epoch so far: {best['epoch']} ({best['variant']}), selection mAP "
                     f"{best['metric']:.2f}, evaluation-set mAP {best['test_mAP']:.2f} [{trainer.protocol}]")
        print("\n".join(lines), flush=True)

    def on_train_end(self, trainer):
        best = trainer.best
        if best["epoch"] is None:
            text = "no epoch finished"
        elif trainer.held_out:
            text = (f"done. Best epoch {best['epoch']} ({best['variant']} weights) chosen on the held-out "
                    f"split (mAP {best['metric']:.2f}); evaluation-set mAP at that epoch: "
                    f"{best['test_mAP']:.2f}")
        else:
            text = (f"done. Highest evaluation-set mAP {best['test_mAP']:.2f} at epoch {best['epoch']} "
                    f"({best['variant']} weights) - {trainer.protocol}")
        main_print(trainer.ctx.is_main, text)


class IgnoredRecorder(Callback):
    """``<path_dest>/ignored_last_epoch.npz`` (--record_ignored): image ids and class indices of every
    entry the loss's top-k ignored in the last epoch, all ranks (for src.reproduce.mechanism)."""

    def __init__(self):
        self.entries: list | None = None

    def on_epoch_start(self, trainer, epoch):
        criterion = trainer.parts.criterion
        if epoch == trainer.last_epoch and hasattr(criterion, "record_ignored"):
            self.entries = []
            criterion.record_ignored(self._keep)

    def _keep(self, samples: torch.Tensor, classes: torch.Tensor) -> None:
        self.entries.append(torch.stack([samples, classes], 1))

    def on_epoch_end(self, trainer, epoch):
        if self.entries is None:
            return
        trainer.parts.criterion.record_ignored(None)
        local = torch.cat(self.entries).numpy() if self.entries else np.zeros((0, 2), dtype=np.int64)
        self.entries = None
        pairs = np.concatenate(gather_objects(local))
        if trainer.ctx.is_main:
            ids = np.asarray(trainer.data.train.image_ids)
            save_npz(os.path.join(trainer.args.path_dest, IGNORED_FILE), image_ids=ids[pairs[:, 0]],
                     classes=pairs[:, 1], class_names=np.asarray(trainer.data.class_names))


class PriorWriter(Callback):
    """The priors --estimate_prior asks for, written at the end as ``<folder>/<stem>.csv`` (clean pass) and
    ``<stem>_running_average.csv``; ``auto``: the clean pass after an ignore-mode (stage 1) run."""

    def __init__(self, args):
        self.method = args.estimate_prior
        if self.method == "auto":
            self.method = "clean" if args.partial_loss_mode == "ignore" else "none"
        self.folder = args.prior_dest or os.path.join(args.path_dest, "priors")
        self.stem = prior_file_stem(args)
        self.written: list[str] = []

    def on_train_end(self, trainer):
        def stop(signum, frame):
            name, code = STOP_SIGNALS[signum]
            raise TrainingInterrupted(
                f"{name} during the prior pass: no prior was written to {self.folder}. To get it, re-run the "
                f"same command with --resume {trainer.paths['last']} (it trains no more), or run python -m "
                f"src.prior --model_path {trainer.paths['best']} --out {os.path.join(self.folder, self.stem)}"
                ".csv with the run's data and label flags", code)

        previous = {}
        for signum in STOP_SIGNALS:
            try:
                previous[signum] = signal.signal(signum, stop)
            except ValueError:  # not the main thread: no handler
                pass
        try:
            self.write_priors(trainer)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def write_priors(self, trainer):
        estimates = {}
        if self.method in ("clean", "both"):
            estimates[f"{self.stem}.csv"] = self.clean_pass_prior(trainer)
        running = trainer.parts.train_prior
        if self.method in ("running_average", "both") and running is not None:
            running.all_reduce()
            estimates[f"{self.stem}_running_average.csv"] = running.avg_pred_train.cpu().numpy()
        for name, values in estimates.items():
            if values is not None and trainer.ctx.is_main:
                self.written.append(write_prior_csv(os.path.join(self.folder, name), trainer.data.class_names,
                                                    values))
                print(f"class prior written to {self.written[-1]}", flush=True)

    @staticmethod
    def clean_pass_prior(trainer) -> np.ndarray | None:
        """The clean pass of best.pth over the training images (None without best.pth)."""
        barrier()  # rank 0 has written best.pth
        best = trainer.paths["best"]
        if not os.path.isfile(best):
            main_print(trainer.ctx.is_main, f"no {best}: clean-pass prior not estimated; run "
                                            "python -m src.prior on the run's best.pth")
            return None
        net = trainer.parts.ema.module  # free after training: reuse it to hold the best weights
        net.load_state_dict(load_training_checkpoint(best)["model"])
        args = trainer.args
        view = eval_view(trainer.data.train_full, build_val_transform(args.image_size, draft=args.jpeg_draft))
        return compute_prior_from_model(net, view, trainer.ctx.device, batch_size=args.batch_size,
                                        workers=args.workers, amp_dtype=trainer.amp_dtype)
