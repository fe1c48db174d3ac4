"""The loops under train.py, validate.py and the prior command: loaders, the training epoch, prediction
(`predict`, `evaluate`) and the clean-pass prior. Epoch ``e``'s data order and augmentation depend on (seed,
epoch, rank) only; evaluation shards without padding, so DDP predicts as one process (docs/usage.md).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from src.data.image_io import ImageReadError
from src.metrics import average_precision_per_class, partial_average_precision, threshold_metrics
from src.prior import ComputePrior
from src.utils.amp import autocast_context
from src.utils.checkpoint import ResumePoint
from src.utils.distributed import (
    ShardSampler,
    any_rank_true,
    gather_rows,
    get_rank,
    is_dist,
    unwrap_model,
)
from src.utils.seed import derive_seed, restore_rng_state, seed_everything


class IndexedDataset(torch.utils.data.Dataset):
    """Items ``(image, target, index)``: the losses with a per-sample label store need the indices."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return image, target, index


def build_train_loader(dataset, batch_size: int, workers: int, seed: int, device: torch.device, rank: int,
                       world_size: int) -> DataLoader:
    """Shuffled loader whose order depends on (seed, epoch) only; call :func:`seed_epoch` every epoch.
    ``DistributedSampler`` even in one process: its permutation is independent of any global RNG."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=False)
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, 0, rank, 1))
    return DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", drop_last=False,
                      generator=generator, persistent_workers=False, worker_init_fn=ignore_sigint)


def ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: a loader worker leaves it to the main process, which stops
    at a step boundary (a worker that died of it would fail the batch being waited for)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def seed_epoch(loader: DataLoader, seed: int, epoch: int, rank: int) -> None:
    """Make epoch ``epoch`` of ``loader`` (and the main process's RNG) a function of (seed, epoch, rank)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(derive_seed(seed, epoch, rank, 1))
    seed_everything(derive_seed(seed, epoch, rank, 0))


def build_eval_loader(dataset, batch_size: int, workers: int, device: torch.device | str = "cpu"):
    """Sequential loader over this rank's contiguous shard (the whole dataset without DDP)."""
    sampler = ShardSampler(len(dataset), batch_size=batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=False,
                      pin_memory=torch.device(device).type == "cuda", persistent_workers=False,
                      worker_init_fn=ignore_sigint)


@dataclass
class TrainingParts:
    """What one optimisation step touches (the model possibly DDP-wrapped or compiled)."""

    model: torch.nn.Module
    ema: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_prior: object | None = None


@dataclass
class EpochResult:
    loss_sum: float  # summed over this rank's steps of the epoch (each step's loss is a batch sum)
    steps_done: int  # optimizer steps completed in the epoch (including resumed ones)
    interrupted: bool  # stopped early by ``should_stop`` (SIGTERM) or ``failure``
    seconds: float
    failure: ImageReadError | None = None  # an image that passed the start-up check but does not decode


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite: the run stops before that step changes the weights."""


def train_one_epoch(parts: TrainingParts, loader, *, device, epoch: int, num_epochs: int,
                    amp_dtype: torch.dtype | None = None, resume: ResumePoint | None = None,
                    print_freq: int = 64, should_stop: Callable[[], bool] | None = None,
                    on_step: Callable[[int, float, float], None] | None = None,
                    show_progress: bool = False) -> EpochResult:
    """One epoch (0-based ``epoch``) of the paper's step (AMP forward, float32 loss given the 1-based epoch,
    OneCycle and EMA steps). ``resume`` skips its ``steps_done`` batches (loaded, so every generator
    advances as in the original run), then restores its RNG state."""
    resume = resume or ResumePoint(epoch=epoch)
    parts.model.train()
    started = time.perf_counter()
    steps_done, loss_sum, total = resume.steps_done, resume.loss_sum, len(loader)
    if steps_done >= total:  # saved before its evaluation (src.trainer): nothing left to train
        return EpochResult(loss_sum, steps_done, False, 0.0)
    bar = tqdm(total=total, initial=steps_done, disable=not show_progress, leave=False, dynamic_ncols=True,
               desc=f"epoch {epoch + 1}/{num_epochs}")
    interrupted, channels_last, failure = False, _is_channels_last(parts.model), None
    try:
        for step, (images, targets, indices) in enumerate(loader):
            if step < resume.steps_done:  # fast-forward of a mid-epoch resume: loaded, not trained on
                if step == resume.steps_done - 1 and resume.rng_state is not None:
                    # Before the next batch is loaded (with workers=0 it draws from these generators).
                    restore_rng_state(resume.rng_state)
                continue
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, amp_dtype):
                logits = parts.model(images)
            loss = parts.criterion(logits.float(), targets, epoch=epoch + 1, num_epochs=num_epochs,
                                   indices=indices)
            loss_value = float(loss.item())
            if any_rank_true(not math.isfinite(loss_value), device):
                lr = parts.scheduler.get_last_lr()[0]
                raise NonFiniteLossError(
                    f"training diverged: loss {loss_value} at epoch {epoch + 1}, step {step + 1}/{total} "
                    f"(learning rate {lr:.3g} at that step); nothing of this step was saved. Lower --lr; "
                    "with --amp and float16 try --amp_dtype bfloat16 or --no-amp")
            parts.optimizer.zero_grad(set_to_none=True)
            parts.scaler.scale(loss).backward()
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
            parts.scheduler.step()
            parts.ema.update(unwrap_model(parts.model))
            if parts.train_prior is not None:
                parts.train_prior.update(logits.detach().float())
            loss_sum += loss_value
            steps_done = step + 1
            lr = parts.scheduler.get_last_lr()[0]
            bar.update(1)
            if step % print_freq == 0:
                bar.set_postfix(loss=f"{loss_value:.1f}", lr=f"{lr:.1e}")
                if not show_progress and get_rank() == 0:
                    print(f"Epoch [{epoch + 1}/{num_epochs}], Step [{step:03d}/{total:03d}], "
                          f"LR {lr:.1e}, Loss: {loss_value:.1f}", flush=True)
            if on_step is not None:
                on_step(step, loss_value, lr)
            if should_stop is not None and should_stop():
                interrupted = steps_done < total
                break
    except ImageReadError as error:  # raised only by loading a batch: the steps before it stand
        interrupted, failure = True, error
    finally:
        bar.close()
    return EpochResult(loss_sum, steps_done, interrupted, time.perf_counter() - started, failure)


def _is_channels_last(model) -> bool:
    net = unwrap_model(model)
    weight = next((p for p in net.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) \
        and not weight.is_contiguous()


def _num_classes(loader, model) -> int:
    names = getattr(loader.dataset, "class_names", None)
    if names is not None:
        return len(names)
    num_classes = getattr(unwrap_model(model), "num_classes", None)
    if num_classes is None:
        raise ValueError("the dataset has no class_names and the model no num_classes attribute: the number "
                         "of classes is unknown; give the dataset a class_names list")
    return int(num_classes)


@torch.no_grad()
def _batches(models: dict, loader, device, amp_dtype: torch.dtype | None):
    """``({name: float32 logits (B, C)}, targets)`` per batch, in eval mode, unwrapped: DDP's buffer
    broadcast would hang when ranks run different numbers of batches."""
    if is_dist() and not isinstance(loader.sampler, ShardSampler):
        raise ValueError("under DDP the evaluation loader must shard without padding; build it with "
                         "src.engine.build_eval_loader(dataset, batch_size, workers)")
    device = torch.device(device)
    nets = {name: unwrap_model(model) for name, model in models.items()}
    was_training = {name: net.training for name, net in nets.items()}
    channels_last = {name: _is_channels_last(net) for name, net in nets.items()}
    for net in nets.values():
        net.eval()
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            logits = {}
            for name, net in nets.items():
                batch = images.contiguous(memory_format=torch.channels_last) if channels_last[name] \
                    else images
                with autocast_context(device, amp_dtype):
                    logits[name] = net(batch).float()
            yield logits, targets
    finally:
        for name, net in nets.items():
            net.train(was_training[name])


@torch.no_grad()
def predict(model, loader, device, *, amp_dtype: torch.dtype | None = None, progress: bool = False):
    """``(targets, scores)``: labels int8 (N, C) in {1, 0, -1}, sigmoid scores float32 (N, C) (a dict name
    -> scores for a dict of models, one pass), in dataset order on every rank. ``progress``: a tqdm bar."""
    models = model if isinstance(model, dict) else {"": model}
    names = list(models)
    num_classes = _num_classes(loader, models[names[0]])
    rows = []
    with contextlib.closing(_batches(models, loader, device, amp_dtype)) as batches:
        for logits, targets in tqdm(batches, total=len(loader), desc="evaluating", disable=not progress,
                                    leave=False, dynamic_ncols=True):
            outputs = [logits[name] for name in names]
            wrong = [out.shape[1] for out in outputs if out.shape[1] != num_classes]
            if wrong:
                raise ValueError(f"predict: a model outputs {wrong[0]} classes but the dataset has "
                                 f"{num_classes}")
            rows.append(torch.cat([*(torch.sigmoid(out).cpu() for out in outputs), targets.float().cpu()],
                                  dim=1))
    local = torch.cat(rows) if rows else torch.zeros((0, (len(names) + 1) * num_classes))
    gathered = gather_rows(local, len(loader.dataset), getattr(loader.sampler, "batch_size", 1))
    targets = gathered[:, -num_classes:].numpy().astype(np.int8)
    scores = {name: gathered[:, i * num_classes:(i + 1) * num_classes].numpy().astype(np.float32)
              for i, name in enumerate(names)}
    return targets, (scores if isinstance(model, dict) else scores[""])


def evaluate(model, loader, device, *, amp_dtype: torch.dtype | None = None, threshold: float = 0.5,
             return_predictions: bool = False, progress: bool = False) -> dict:
    """The metrics of :func:`predict`'s scores (a dict name -> metrics for a dict of models). Full labels:
    the paper's mAP; any -1: the partial AP of src.metrics. ``ap_per_class`` in [0, 1], NaN when skipped."""
    targets, scores = predict(model, loader, device, amp_dtype=amp_dtype, progress=progress)
    partial = bool((targets == -1).any())
    results = {}
    for name, values in (scores.items() if isinstance(model, dict) else [("", scores)]):
        result = {"num_samples": int(targets.shape[0]), "num_classes": int(targets.shape[1]),
                  "partial": partial}
        if partial:
            summary = partial_average_precision(targets, values)  # mAP, mAP_weighted, skipped_* counts
            result.update(summary._asdict(), num_classes_skipped=summary.num_classes_skipped)
            ap = np.where(summary.ap_per_class < 0, np.nan, summary.ap_per_class)
        else:
            ap = average_precision_per_class(targets, values)
            no_pos = int(((targets == 1).sum(axis=0) == 0).sum())
            result.update(mAP=100.0 * float(ap.mean()), num_classes_skipped=0,
                          classes_without_positives=no_pos)
        result["ap_per_class"] = ap
        result.update(threshold_metrics(targets, values, threshold=threshold), threshold=float(threshold))
        if return_predictions:
            result["targets"], result["scores"] = targets, values
        results[name] = result
    return results if isinstance(model, dict) else results[""]


@torch.no_grad()
def compute_prior_from_model(model: torch.nn.Module, dataset, device, batch_size: int = 64, workers: int = 0,
                             amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """The clean pass: the mean sigmoid prediction per class, float32 (C,), of the training set with the
    eval transform (`src.data.eval_view`), unlike the paper's running average over changing models."""
    if len(dataset) == 0:
        raise ValueError("compute_prior_from_model: the dataset is empty; check --data and the split")
    loader = build_eval_loader(dataset, batch_size, workers, device)
    accumulator = ComputePrior([str(c) for c in range(_num_classes(loader, model))])
    with contextlib.closing(_batches({"": model}, loader, device, amp_dtype)) as batches:
        for logits, _ in batches:
            accumulator.update(logits[""])
    accumulator.all_reduce()
    return accumulator.avg_pred_train.cpu().numpy().astype(np.float32)


def describe_map(result: dict) -> str:
    """'mAP 71.23' or 'partial mAP 64.10 (AP over annotated labels; 3 of 80 classes skipped)'."""
    text = f"{result['mAP']:.2f}"  # NaN prints as nan
    if result["partial"]:
        return (f"partial mAP {text} (AP over annotated labels only; {result['num_classes_skipped']} of "
                f"{result['num_classes']} classes skipped: no annotated sample, positive or negative)")
    return f"mAP {text}"
