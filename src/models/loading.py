"""Loading weights from local files: the paper's checkpoints, ImageNet backbones and our own checkpoints.

Accepted containers (``torch.load`` of the file):
- the paper's released files ``{'model': state_dict, 'num_classes': int, 'idx_to_class': {idx: name}}``;
- bare state dicts (the paper's training script), ``{'state_dict': ...}`` wrappers, DDP ``module.`` and
  torch.compile ``_orig_mod.`` key prefixes;
- ours: ``{'model', 'model_name', 'num_classes', 'do_bottleneck_head', 'class_names', ...}`` with optional
  ``ema`` (used when ``use_ema=True``).
State dicts may be in the paper's InPlaceABN layout (converted, see ``checkpoint_convert``) or timm's.
Older files may lack ``num_batches_tracked``; those buffers keep the model's value (only used when a
BatchNorm has momentum=None). Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from src.models.checkpoint_convert import (
    TRESNET_ARCHS,
    convert_original_to_timm,
    describe_tresnet_arch,
    find_bottleneck_classifier,
    head_info,
    infer_tresnet_name,
    is_original_tresnet_layout,
    is_timm_tresnet_layout,
    strip_wrapper_prefixes,
)
from src.models.factory import create_model

_EXPECTED = 'expected a file written by torch.save holding a state_dict or a dict with a "model" state_dict'


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint, or whose contents do not fit the requested model."""


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """The checkpoint path does not exist (catchable as FileNotFoundError or ValueError)."""


def read_checkpoint_file(path, allow_pickle: bool = True):
    """``torch.load`` a local file on CPU, safely when possible.

    First with ``weights_only=True`` (plus ``argparse.Namespace``, which training scripts store as
    ``args``). Some old files hold other Python objects (e.g. numpy arrays in an RNG state); those
    need full unpickling, which can run code embedded in the file - so it is done only when
    ``allow_pickle`` is True, with a warning, and should be used only for files you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f'checkpoint file not found: {path!r} (expected a .pth file written by '
                                      'torch.save; check --model-path)')
    with open(path, 'rb') as handle:
        magic = handle.read(4)
    # torch.save writes a zip archive (new format) or a pickle starting with the protocol opcode 0x80.
    if not (magic.startswith(b'PK\x03\x04') or magic.startswith(b'\x80')):
        raise CheckpointError(f'{path!r} is not a PyTorch checkpoint (starts with {magic!r}); {_EXPECTED}')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        if 'weights only load failed' not in str(error).lower() or not allow_pickle:
            raise CheckpointError(f'{path!r} is not a PyTorch checkpoint readable with weights_only=True '
                                  f'({str(error).splitlines()[0]}); {_EXPECTED}') from error
    except Exception as error:  # zip/format errors of torch.load: the file is not a torch.save file
        first_line = str(error).splitlines()[0] if str(error) else ''
        raise CheckpointError(f'{path!r} is not a PyTorch checkpoint ({type(error).__name__}: {first_line}); '
                              f'{_EXPECTED}') from error
    warnings.warn(f'{path!r} holds non-tensor Python objects; loading it with weights_only=False '
                  '(only do this for files you trust)', stacklevel=2)
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise CheckpointError(f'{path!r} could not be unpickled ({type(error).__name__}: {error})') from error


_EMA_KEYS = ('ema', 'model_ema', 'state_dict_ema')


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())


def extract_state_dict(checkpoint, path='checkpoint', use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint (see the module docstring), prefixes stripped."""
    obj = checkpoint
    if use_ema:
        ema_key = next((k for k in _EMA_KEYS if isinstance(obj, Mapping) and obj.get(k) is not None), None)
        if ema_key is None:
            raise CheckpointError(f'{path!r} has no EMA weights (no "ema" entry); load it with use_ema=False')
        obj = obj[ema_key]
    for _ in range(3):  # a few wrapper levels, e.g. {'model': {'state_dict': ...}}
        if _is_state_dict(obj):
            return strip_wrapper_prefixes(obj)
        key = next((k for k in ('model', 'state_dict', 'module') if isinstance(obj, Mapping)
                    and isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    found = f'a {type(checkpoint).__name__}'
    if isinstance(checkpoint, Mapping):
        found += f' with keys {sorted(map(str, checkpoint))[:10]}'
    raise CheckpointError(f'{path!r} holds no state dict: found {found}; expected a dict of tensors or '
                          'a dict with a "model" (or "state_dict") entry holding one')


def to_timm_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert the paper's InPlaceABN layout to timm's; timm-layout dicts are returned unchanged."""
    if is_original_tresnet_layout(state_dict):
        return convert_original_to_timm(state_dict)
    return dict(state_dict)


def _class_names(checkpoint, num_classes: int, path) -> list[str]:
    names = None
    if isinstance(checkpoint, Mapping) and checkpoint.get('class_names') is not None:
        names = [str(name) for name in checkpoint['class_names']]
    elif isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('idx_to_class'), Mapping):
        idx_to_class = {int(idx): str(name) for idx, name in checkpoint['idx_to_class'].items()}
        if sorted(idx_to_class) != list(range(len(idx_to_class))):
            raise CheckpointError(f'{path!r}: idx_to_class keys must be 0..N-1')
        names = [idx_to_class[i] for i in range(len(idx_to_class))]
    if names is None:
        return [f'class_{i}' for i in range(num_classes)]
    if len(names) != num_classes:
        raise CheckpointError(f'{path!r} lists {len(names)} class names but its head has '
                              f'{num_classes} outputs')
    return names


def _resolve_model_name(state_dict, checkpoint, model_name, path) -> str:
    stored = checkpoint.get('model_name') if isinstance(checkpoint, Mapping) else None
    inferred = infer_tresnet_name(state_dict)
    if is_timm_tresnet_layout(state_dict) and inferred is None:
        layers, width, v2 = describe_tresnet_arch(state_dict)
        raise CheckpointError(f'{path!r} holds a TResNet with blocks {list(layers)}, stem width {width}, '
                              f'v2={v2}, which matches none of {dict(TRESNET_ARCHS)} (blocks, width, v2)')
    for source, name in (('model_name argument', model_name), ('file\'s model_name', stored)):
        if name is not None and inferred is not None and str(name).lower() != inferred:
            raise CheckpointError(f'{path!r} holds a {inferred} (from its tensor shapes) but the {source} '
                                  f'says {name!r}; pass model_name={inferred!r} or the matching file')
    name = model_name or stored or inferred
    if name is None:
        raise CheckpointError(f'cannot tell the architecture of {path!r}: it is not a TResNet layout and '
                              'stores no model_name; pass model_name=... (any timm model name)')
    return str(name).lower()


def _resolve_head(state_dict, checkpoint, model_name, path) -> dict:
    bottleneck_prefix = find_bottleneck_classifier(state_dict)
    info = head_info(state_dict, bottleneck_prefix or 'head.fc')
    if info is None and isinstance(checkpoint, Mapping) and checkpoint.get('num_classes') is not None:
        info = {'do_bottleneck_head': bool(checkpoint.get('do_bottleneck_head', False)),
                'num_classes': int(checkpoint['num_classes'])}
    if info is None:  # plain classifier of a non-TResNet timm model: ask the model where it is
        probe = create_model(model_name=model_name, num_classes=1)
        info = head_info(state_dict, probe.pretrained_cfg.get('classifier', 'head.fc'))
    if info is None:
        raise CheckpointError(f'{path!r}: cannot find the classifier of {model_name} in the state dict '
                              'and the file stores no num_classes')
    stored = checkpoint.get('num_classes') if isinstance(checkpoint, Mapping) else None
    if stored is not None and int(stored) != info['num_classes']:
        raise CheckpointError(f'{path!r} says num_classes={stored} but its head has '
                              f'{info["num_classes"]} outputs')
    return info


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           path='checkpoint') -> None:
    """Strict load that fills absent ``num_batches_tracked`` and explains mismatches."""
    state_dict = dict(state_dict)
    own = model.state_dict()
    for key, value in own.items():
        if key.endswith('num_batches_tracked') and key not in state_dict:
            state_dict[key] = value.clone()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [f'{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}'
                   for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f'{path!r} does not fit {getattr(model, "model_name", type(model).__name__)}: '
            f'{len(missing)} missing (e.g. {missing[:3]}), '
            f'{len(unexpected)} unexpected (e.g. {unexpected[:3]}), '
            f'{len(wrong_shape)} with other shapes (e.g. {wrong_shape[:3]}); pass the right model_name')
    model.load_state_dict(state_dict, strict=True)


def load_model(path, model_name: str | None = None, device='cpu', use_ema: bool = False,
               allow_pickle: bool = True) -> tuple[nn.Module, list[str]]:
    """Build the model a checkpoint file describes and load it strictly; returns (model in eval mode, names).

    Architecture: ``model_name`` if given, else the file's ``model_name``, else inferred from the TResNet
    tensor shapes. Head type and num_classes come from the tensors (``head.fc.FC.weight`` => bottleneck).
    Class names: the file's ``class_names`` or ``idx_to_class`` (index -> name/MID), else 'class_<i>'.
    """
    checkpoint = read_checkpoint_file(path, allow_pickle=allow_pickle)
    state_dict = to_timm_layout(extract_state_dict(checkpoint, path, use_ema=use_ema))
    name = _resolve_model_name(state_dict, checkpoint, model_name, path)
    head = _resolve_head(state_dict, checkpoint, name, path)
    model = create_model(model_name=name, num_classes=head['num_classes'],
                         do_bottleneck_head=head['do_bottleneck_head'],
                         bottleneck_features=head.get('bottleneck_features', 512))
    load_state_dict_strict(model, state_dict, path)
    class_names = _class_names(checkpoint, head['num_classes'], path)
    return model.to(device).eval(), class_names


@dataclass
class BackboneLoadReport:
    """What :func:`load_pretrained_backbone` did, by state-dict key."""

    path: str
    loaded: list[str] = field(default_factory=list)
    skipped_classifier: list[str] = field(default_factory=list)
    skipped_unexpected: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> list[str]:
        return self.skipped_classifier + self.skipped_unexpected + self.skipped_shape

    def __str__(self) -> str:
        lines = [f'pretrained backbone {self.path}: loaded {len(self.loaded)} tensors, skipped '
                 f'{len(self.skipped)} ({len(self.skipped_classifier)} classifier, '
                 f'{len(self.skipped_unexpected)} not in model, {len(self.skipped_shape)} shape mismatch), '
                 f'missing {len(self.missing)}']
        for title, keys in (('shape mismatch', self.skipped_shape), ('not in model', self.skipped_unexpected),
                            ('missing (kept initialised)', self.missing)):
            if keys:
                lines.append(f'  {title}: {keys[:8]}{" ..." if len(keys) > 8 else ""}')
        return '\n'.join(lines)


def _classifier_prefix(model: nn.Module) -> str:
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier', 'head.fc')
    return classifier if isinstance(classifier, str) else classifier[0]


def load_pretrained_backbone(model: nn.Module, path, allow_pickle: bool = True) -> BackboneLoadReport:
    """Load ImageNet-1k/21k weights (paper InPlaceABN or timm layout) into ``model`` except the classifier.

    Tensors whose shape differs from the model's are skipped and reported; the classifier (``head.fc*``
    for TResNets) is never loaded. Raises CheckpointError when nothing at all fits the model. Prints
    nothing: the returned report's ``str()`` is the summary for the caller to print.
    """
    checkpoint = read_checkpoint_file(path, allow_pickle=allow_pickle)
    state_dict = to_timm_layout(extract_state_dict(checkpoint, path))
    target = getattr(model, '_orig_mod', model)
    own = target.state_dict()
    classifier = _classifier_prefix(target)
    report = BackboneLoadReport(path=os.fspath(path))
    to_load = {}
    for key, value in state_dict.items():
        if key == classifier or key.startswith(classifier + '.'):
            report.skipped_classifier.append(key)
        elif key not in own:
            report.skipped_unexpected.append(key)
        elif value.shape != own[key].shape:
            report.skipped_shape.append(f'{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}')
        else:
            to_load[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in to_load and not k.startswith(classifier + '.')
                      and not k.endswith('num_batches_tracked')]
    if not to_load:
        arch = getattr(target, 'model_name', type(target).__name__)
        raise CheckpointError(f'{path!r}: no tensor matches {arch} (file keys e.g. {list(state_dict)[:3]}); '
                              'expected a pretrained backbone of the same architecture in the paper '
                              '(InPlaceABN) or timm layout')
    target.load_state_dict(to_load, strict=False)
    return report
