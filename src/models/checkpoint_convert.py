"""State-dict conversion from the paper's TResNet layout (InPlaceABN) to timm's TResNet.
The paper's conv unit ``convN`` (or shortcut ``downsample.i``) is ``Sequential(Conv2d, InPlaceABN)``, keys
``convN.0.*`` / ``convN.1.*`` (anti-aliased: ``convN.0.0.*`` / ``convN.0.1.*``), timm's ``convN.conv`` /
``convN.bn``; the other keys (SE, head) are the same. InPlaceABN scales by ``|w| + eps`` (eps = 1e-5: an
invertible scale, which it needs to recover its input in backward), so the BatchNorm weight becomes
``|w| + 1e-5``; the activations (leaky ReLU 1e-2 in the stem, 1e-3 elsewhere) are timm's too."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

INPLACE_ABN_EPS = 1e-5

# (blocks per stage, stem width, v2 = bottleneck stages 1-2)
TRESNET_ARCHS: dict[str, tuple[tuple[int, int, int, int], int, bool]] = {
    'tresnet_m': ((3, 4, 11, 3), 64, False),
    'tresnet_l': ((4, 5, 18, 3), 76, False),
    'tresnet_xl': ((4, 5, 24, 3), 83, False),
    'tresnet_v2_l': ((3, 4, 23, 3), 64, True),
}

# "<unit>[.0].<0|1>.<leaf>", unit = convN or downsample.i; ".0": anti-aliased unit; part 0 conv, 1 ABN.
_ORIGINAL_UNIT_KEY = re.compile(r'^(?P<unit>(?:.*\.)?(?:conv\d+|downsample\.\d+))(?:\.0)?\.(?P<part>[01])\.'
                                r'(?P<leaf>[^.]+)$')
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def is_original_tresnet_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return 'body.conv1.0.weight' in state_dict


def is_timm_tresnet_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return 'body.conv1.conv.weight' in state_dict


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` (DDP / EMA) and ``_orig_mod.`` (torch.compile) prefixes of every key."""
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
    stage_blocks = []
    for stage in range(1, 5):
        pattern = re.compile(rf'^body\.layer{stage}\.(\d+)\.')
        indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
        stage_blocks.append(len(indices))
    width = int(state_dict['body.conv1.conv.weight'].shape[0])
    is_v2 = any(key.startswith('body.layer1.0.conv3.') for key in state_dict)
    return tuple(stage_blocks), width, is_v2


def infer_tresnet_name(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    if not is_timm_tresnet_layout(state_dict):
        return None
    arch = describe_tresnet_arch(state_dict)
    return next((name for name, known in TRESNET_ARCHS.items() if known == arch), None)


def head_info(state_dict: Mapping[str, torch.Tensor], classifier: str = 'head.fc') -> dict | None:
    """Head type and size under ``classifier``: bottleneck (``.embedding_generator.0``, ``.FC``) or plain."""
    bottleneck_key = f'{classifier}.FC.weight'
    if bottleneck_key in state_dict:
        out_features, in_features = state_dict[bottleneck_key].shape
        return {'do_bottleneck_head': True, 'num_classes': int(out_features),
                'bottleneck_features': int(in_features)}
    plain_key = f'{classifier}.weight'
    if plain_key in state_dict:
        return {'do_bottleneck_head': False, 'num_classes': int(state_dict[plain_key].shape[0])}
    return None


def find_bottleneck_classifier(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Prefix of a bottleneck head anywhere in the state dict (non-TResNet timm models)."""
    suffix = '.FC.weight'
    for key in state_dict:
        prefix = key[:-len(suffix)]
        if key.endswith(suffix) and f'{prefix}.embedding_generator.0.weight' in state_dict:
            return prefix
    return None
