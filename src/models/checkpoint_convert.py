"""State-dict conversion between the paper's TResNet layout (InPlaceABN) and timm's TResNet.

The CSL paper's checkpoints were written by the original TResNet code, where every conv is followed
by an ``inplace_abn.InPlaceABN`` layer. In that layout a conv unit ``convN`` is
``Sequential(Conv2d, InPlaceABN)`` (keys ``convN.0.weight`` and ``convN.1.{weight,bias,running_*}``),
and an anti-aliased stride-2 unit is ``Sequential(Sequential(Conv2d, InPlaceABN), BlurPool)``
(keys ``convN.0.0.weight`` / ``convN.0.1.*``; the blur filter is not stored). Shortcuts are
``downsample.{i}.0`` / ``downsample.{i}.1`` where ``i`` is 1 after an average pool and 0 without.
timm names the same parts ``convN.conv`` / ``convN.bn`` and ``downsample.{i}.conv`` / ``.bn``.

Numerics. InPlaceABN in eval mode computes, per channel,

    y = act((x - running_mean) / sqrt(running_var + eps) * (|w| + eps) + b),   eps = 1e-5,

i.e. it uses the *absolute value* of its weight plus eps as the scale (that keeps the scale
invertible, which InPlaceABN needs to recover its input in the backward pass). A plain BatchNorm
computes the same with scale ``w``, so the converted BatchNorm weight is ``|w| + 1e-5``; bias and
running statistics are copied. The activations are unchanged by conversion: the stem uses leaky ReLU
with slope 1e-2, the other block convs leaky ReLU with slope 1e-3, and the last conv of each block and
the shortcut conv use no activation - timm's TResNet has exactly the same choices.

Everything else (SE ``fc1``/``fc2``, the classifier ``head.fc*``) has identical keys in both layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

INPLACE_ABN_EPS = 1e-5

# Architectures of the timm TResNet variants: (blocks per stage, stem width, v2 = bottleneck stages 1-2).
TRESNET_ARCHS: dict[str, tuple[tuple[int, int, int, int], int, bool]] = {
    'tresnet_m': ((3, 4, 11, 3), 64, False),
    'tresnet_l': ((4, 5, 18, 3), 76, False),
    'tresnet_xl': ((4, 5, 24, 3), 83, False),
    'tresnet_v2_l': ((3, 4, 23, 3), 64, True),
}

# One conv unit of the original layout: "<unit>[.0].<0|1>.<leaf>", unit = convN or downsample.i.
# The optional ".0" is the inner Sequential of an anti-aliased unit; part 0 is the conv, 1 the ABN.
_ORIGINAL_UNIT_KEY = re.compile(r'^(?P<unit>(?:.*\.)?(?:conv\d+|downsample\.\d+))(?:\.0)?\.(?P<part>[01])\.'
                                r'(?P<leaf>[^.]+)$')
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def is_original_tresnet_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the paper's InPlaceABN layout (stem conv stored as ``body.conv1.0.weight``)."""
    return 'body.conv1.0.weight' in state_dict


def is_timm_tresnet_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for timm's TResNet layout (stem conv stored as ``body.conv1.conv.weight``)."""
    return 'body.conv1.conv.weight' in state_dict


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DDP / EMA) and ``_orig_mod.`` (torch.compile) prefixes carried by every key,
    repeatedly (``module._orig_mod.`` too)."""
    out = dict(state_dict)
    changed = True
    while changed and out:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in out):
                out = {key[len(prefix):]: value for key, value in out.items()}
                changed = True
    return out


def convert_original_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A paper (InPlaceABN) TResNet state dict with timm's key names and BatchNorm weights ``|w| + 1e-5``
    (module docstring); keys outside conv units (SE, head) copied; order preserved."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _ORIGINAL_UNIT_KEY.match(key)
        if match is None:
            converted[key] = value
            continue
        is_norm = match['part'] == '1'
        new_key = f"{match['unit']}.{'bn' if is_norm else 'conv'}.{match['leaf']}"
        if is_norm and match['leaf'] == 'weight':
            value = value.abs() + INPLACE_ABN_EPS
        converted[new_key] = value
    return converted


def describe_tresnet_arch(state_dict: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], int, bool]:
    """(blocks per stage, stem width, v2) of a timm-layout TResNet state dict."""
    stage_blocks = []
    for stage in range(1, 5):
        pattern = re.compile(rf'^body\.layer{stage}\.(\d+)\.')
        indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
        stage_blocks.append(len(indices))
    width = int(state_dict['body.conv1.conv.weight'].shape[0])
    is_v2 = any(key.startswith('body.layer1.0.conv3.') for key in state_dict)
    return tuple(stage_blocks), width, is_v2


def infer_tresnet_name(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the timm TResNet variant whose architecture a timm-layout state dict has, else None."""
    if not is_timm_tresnet_layout(state_dict):
        return None
    arch = describe_tresnet_arch(state_dict)
    for name, known in TRESNET_ARCHS.items():
        if arch == known:
            return name
    return None


def head_info(state_dict: Mapping[str, torch.Tensor], classifier: str = 'head.fc') -> dict | None:
    """Head type and size stored under ``classifier`` (None without one): the bottleneck head (OpenImages)
    is ``<classifier>.embedding_generator.0`` (features -> 512) then ``<classifier>.FC`` (512 -> classes),
    the plain head ``<classifier>.weight``."""
    bottleneck_key = f'{classifier}.FC.weight'
    if bottleneck_key in state_dict:
        return {
            'do_bottleneck_head': True,
            'num_classes': int(state_dict[bottleneck_key].shape[0]),
            'bottleneck_features': int(state_dict[bottleneck_key].shape[1]),
        }
    plain_key = f'{classifier}.weight'
    if plain_key in state_dict:
        return {'do_bottleneck_head': False, 'num_classes': int(state_dict[plain_key].shape[0])}
    return None


def find_bottleneck_classifier(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Prefix of a bottleneck head anywhere in the state dict (for non-TResNet timm models)."""
    suffix = '.FC.weight'
    for key in state_dict:
        prefix = key[:-len(suffix)]
        if key.endswith(suffix) and f'{prefix}.embedding_generator.0.weight' in state_dict:
            return prefix
    return None
