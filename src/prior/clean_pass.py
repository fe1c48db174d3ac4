"""The clean pass: the prior as the mean eval-mode prediction of a model over the training images.

It runs in eval mode (frozen batch-norm statistics, no dropout) on the validation transform (resize +
ToTensor, no augmentation; see `eval_view`), so the estimate does not depend on the random crops of the
last epoch - unlike the paper's code, which averages the predictions of the training batches while the
model is still changing (`ComputePrior` fed by train.py, ``--estimate_prior running_average``).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from torch.utils.data import Dataset

from src.engine import build_eval_loader, iter_logits, num_classes_of
from src.prior.accumulator import ComputePrior


def eval_view(dataset, transform):
    """A shallow copy of ``dataset`` (same images and labels) that applies ``transform`` instead."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


@torch.no_grad()
def compute_prior_from_model(model: torch.nn.Module, dataset: Dataset, device, batch_size: int = 64,
                             workers: int = 0, amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """Mean sigmoid prediction per class over ``dataset`` (pass it with the eval transform; see
    `eval_view`), float32 (C,); the model's train/eval mode is restored afterwards.

    The batches come from `src.engine.iter_logits`, the prediction loop of validation (unwrapped model,
    eval mode, channels_last input for a channels_last model). Distributed: each rank predicts its
    contiguous, batch-aligned shard (`src.engine.build_eval_loader`, no padding) and the sums are
    all-reduced (`ComputePrior.all_reduce`), so every rank returns the mean over all images, each
    counted once; only C sums travel, never the N x C predictions."""
    if len(dataset) == 0:
        raise ValueError("compute_prior_from_model: the dataset is empty; check --data and the split")
    device = torch.device(device)
    loader = build_eval_loader(dataset, batch_size, workers, device)
    class_names = getattr(dataset, "class_names", None)
    if not class_names:  # the class count as src.engine.predict gets it: dataset, else model
        class_names = [str(c) for c in range(num_classes_of(loader, model))]
    accumulator = ComputePrior(class_names)
    with contextlib.closing(iter_logits(model, loader, device, amp_dtype)) as batches:
        for logits, _ in batches:
            accumulator.update(logits)
    accumulator.all_reduce()
    return accumulator.avg_pred_train.cpu().numpy().astype(np.float32)
