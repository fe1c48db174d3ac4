"""Mixed precision: the autocast dtypes the commands accept and how ``--amp`` resolves on a device."""

from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_amp(device: torch.device, amp: bool | None, amp_dtype: str,
                training: bool = True) -> torch.dtype | None:
    """``amp`` None means on for CUDA only. Training in float16 needs CUDA (GradScaler); bfloat16 runs
    anywhere, and so does float16 inference."""
    use_amp = torch.device(device).type == "cuda" if amp is None else amp
    if not use_amp:
        return None
    if training and amp_dtype == "float16" and torch.device(device).type != "cuda":
        raise ValueError(f"--amp with --amp_dtype float16 needs a CUDA device (device is {device}); use "
                         "--amp_dtype bfloat16 or --no-amp")
    return AMP_DTYPES[amp_dtype]


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)
