"""Loading weights: the paper's checkpoints, ImageNet backbones and our own checkpoints.

Where from (`read_checkpoint`): a local file, or on demand (``src.models.hub``) ``timm:<name>`` (timm's
pretrained weights), an ``http(s)://`` / ``file://`` URL (downloaded once into the torch hub cache,
optional ``#sha256=<hex>``) or a ``csl:<name>`` alias of the paper's released models. A local path never
downloads anything and fails as before when the file is missing.

Accepted containers (``torch.load`` of the file):
- the paper's released files ``{'model': state_dict, 'num_classes': int, 'idx_to_class': {idx: name}}``;
- bare state dicts (the paper's training script), ``{'state_dict': ...}`` wrappers, DDP ``module.`` and
  torch.compile ``_orig_mod.`` key prefixes;
- ours: ``{'model', 'model_name', 'num_classes', 'do_bottleneck_head', 'class_names', ...}`` with optional
  ``ema`` (used when ``use_ema=True``).
State dicts may be in the paper's InPlaceABN layout (converted, see ``checkpoint_convert``) or timm's.
Older files may lack ``num_batches_tracked``; those buffers keep the model's value (only used when a
BatchNorm has momentum=None).

Safety: files, downloaded ones included, are read with ``torch.load(weights_only=True)`` plus a short
allow-list (``SAFE_CHECKPOINT_GLOBALS``: ``argparse.Namespace``, numpy scalars), so loading never runs
code from the file; anything else is refused unless the caller passes ``allow_pickle=True``
(``--unsafe_pickle``). timm reads its own weights with ``weights_only=True`` (or safetensors).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
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
from src.models.hub import cached_download, parse_weights_spec, timm_pretrained_checkpoint

_EXPECTED = 'expected a file written by torch.save holding a state_dict or a dict with a "model" state_dict'


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint, or whose contents do not fit the requested model."""


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """The checkpoint path does not exist (catchable as FileNotFoundError or ValueError)."""


def _numpy_scalar_globals() -> list:
    """What ``torch.load(weights_only=True)`` needs for numpy scalars (e.g. ``num_classes`` saved as
    ``np.int64``): ``numpy.dtype``, the classes of the bool / integer / float / complex dtypes (their
    state is restored on load) and the scalar constructor, under its numpy 1.x and 2.x module names.
    None can run code: ``scalar(dtype, bytes)`` only reinterprets bytes as a number of a numeric dtype
    (object, string and structured dtypes are not allowed)."""
    core = getattr(np, '_core', None) or np.core
    scalar = core.multiarray.scalar
    codes = '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']
    dtype_classes = list(dict.fromkeys(type(np.dtype(code)) for code in codes))
    return [np.dtype, *dtype_classes, (scalar, 'numpy.core.multiarray.scalar'),
            (scalar, 'numpy._core.multiarray.scalar')]


# Types allowed on top of weights_only's tensors, plain containers (OrderedDict included) and numbers:
# argparse.Namespace (training scripts store their ``args``) and numpy scalars / dtypes.
SAFE_CHECKPOINT_GLOBALS = [argparse.Namespace, *_numpy_scalar_globals()]
_UNSUPPORTED_GLOBAL = re.compile(r'Unsupported global: GLOBAL (\S+)')


def _refused_globals(path: str, error: Exception) -> list[str]:
    found = _UNSUPPORTED_GLOBAL.findall(str(error))
    try:  # every disallowed global of the file, not only the first one (zip-format files only)
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path) or found
    except Exception:  # noqa: BLE001 - best effort: the message works without the full list
        pass
    return [name for name in found if name not in _allowed_names()]


def _allowed_names() -> set[str]:
    names = set()
    for item in SAFE_CHECKPOINT_GLOBALS:
        names.add(item[1] if isinstance(item, tuple) else f'{item.__module__}.{item.__qualname__}')
    return names


def read_checkpoint_file(path, allow_pickle: bool = False):
    """``torch.load`` a local file on CPU without ever running code from it, unless ``allow_pickle``.

    The file is read with ``weights_only=True`` (tensors, plain containers, numbers, strings) plus
    ``SAFE_CHECKPOINT_GLOBALS`` (``argparse.Namespace``, numpy scalars): this reads the paper's
    released files, ImageNet backbones and our own checkpoints.  A file that holds any other Python
    object needs full unpickling, which can execute code embedded in the file: it is refused with a
    `CheckpointError` naming those objects and ``--unsafe_pickle``, unless ``allow_pickle`` is True
    (the scripts' ``--unsafe_pickle``), in which case it is loaded with a warning.
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
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        if 'weights only load failed' not in str(error).lower():
            raise CheckpointError(f'{path!r} is not a PyTorch checkpoint readable with weights_only=True '
                                  f'({str(error).splitlines()[0]}); {_EXPECTED}') from None
        if not allow_pickle:
            objects = _refused_globals(path, error) or ['objects other than tensors and plain containers']
            raise CheckpointError(
                f'{path!r} was not loaded: it holds Python objects ({", ".join(objects[:5])}) whose '
                'unpickling can execute code embedded in the file. If you trust its source, pass '
                '--unsafe_pickle (allow_pickle=True); otherwise re-save its state_dict with torch.save'
            ) from None
    except Exception as error:  # zip/format errors of torch.load: the file is not a torch.save file
        first_line = str(error).splitlines()[0] if str(error) else ''
        raise CheckpointError(f'{path!r} is not a PyTorch checkpoint ({type(error).__name__}: {first_line}); '
                              f'{_EXPECTED}') from error
    warnings.warn(f'{path!r} holds arbitrary Python objects; loading it with weights_only=False because of '
                  '--unsafe_pickle (allow_pickle=True): only do this for files you trust', stacklevel=2)
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except Exception as error:
        raise CheckpointError(f'{path!r} could not be unpickled ({type(error).__name__}: {error})') from error


def read_checkpoint(spec, allow_pickle: bool = False, *, progress: bool = True,
                    pretrained_cfg_overlay: Mapping | None = None, cache_dir: str | None = None):
    """(checkpoint, source) for any ``--model-path`` value: a local path (`read_checkpoint_file`, unchanged),
    a URL or ``csl:`` alias (`src.models.hub.cached_download`, then the same safe `read_checkpoint_file`;
    ``cache_dir`` overrides the torch hub cache) or ``timm:<name>``
    (`src.models.hub.timm_pretrained_checkpoint`, which ``pretrained_cfg_overlay`` is passed to).
    ``source`` is the local file that was read, or a description of timm's source. ``progress``: show
    download progress bars (stderr)."""
    parsed = parse_weights_spec(spec)
    if parsed.kind == 'local':
        return read_checkpoint_file(parsed.location, allow_pickle=allow_pickle), parsed.location
    if parsed.kind == 'timm':
        checkpoint = timm_pretrained_checkpoint(
            parsed.location, pretrained_cfg_overlay=pretrained_cfg_overlay, spec=parsed.spec)
        return checkpoint, checkpoint['source']
    cached = cached_download(parsed.location, parsed.sha256, progress=progress, cache_dir=cache_dir)
    try:
        return read_checkpoint_file(cached.path, allow_pickle=allow_pickle), cached.path
    except CheckpointError as error:
        raise CheckpointError(f'{parsed.spec} (read from {cached.path}): {error}') from error


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
               allow_pickle: bool = False, *, progress: bool = True,
               pretrained_cfg_overlay: Mapping | None = None) -> tuple[nn.Module, list[str]]:
    """Build the model a checkpoint describes and load it strictly; returns (model in eval mode, names).

    ``path``: a local file, ``timm:<name>``, a URL or a ``csl:`` alias (see `read_checkpoint`, which
    ``progress`` and ``pretrained_cfg_overlay`` are passed to).

    Architecture: ``model_name`` if given, else the file's ``model_name``, else inferred from the TResNet
    tensor shapes. Head type and num_classes come from the tensors (``head.fc.FC.weight`` => bottleneck).
    Class names: the file's ``class_names`` or ``idx_to_class`` (index -> name/MID), else 'class_<i>'.
    A file with ``boostlu_alpha`` gives a BoostLU model (`src.models.boostlu`), as it was trained.
    ``allow_pickle``: see `read_checkpoint_file` (False never runs code from the file).
    """
    path = os.fspath(path)
    checkpoint, _ = read_checkpoint(path, allow_pickle, progress=progress,
                                    pretrained_cfg_overlay=pretrained_cfg_overlay)
    state_dict = to_timm_layout(extract_state_dict(checkpoint, path, use_ema=use_ema))
    name = _resolve_model_name(state_dict, checkpoint, model_name, path)
    head = _resolve_head(state_dict, checkpoint, name, path)
    boostlu_alpha = checkpoint.get('boostlu_alpha') if isinstance(checkpoint, Mapping) else None
    model = create_model(model_name=name, num_classes=head['num_classes'],
                         do_bottleneck_head=head['do_bottleneck_head'],
                         bottleneck_features=head.get('bottleneck_features', 512),
                         boostlu_alpha=boostlu_alpha)
    load_state_dict_strict(model, state_dict, path)
    class_names = _class_names(checkpoint, head['num_classes'], path)
    return model.to(device).eval(), class_names


@dataclass
class BackboneLoadReport:
    """What :func:`load_pretrained_backbone` did, by state-dict key. ``path``: the value as given (a path,
    URL, ``csl:`` or ``timm:`` name); ``source``: the local file read or timm's source, when different."""

    path: str
    loaded: list[str] = field(default_factory=list)
    skipped_classifier: list[str] = field(default_factory=list)
    skipped_unexpected: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    source: str | None = None

    @property
    def skipped(self) -> list[str]:
        return self.skipped_classifier + self.skipped_unexpected + self.skipped_shape

    def __str__(self) -> str:
        origin = f' ({self.source})' if self.source and self.source != self.path else ''
        lines = [f'pretrained backbone {self.path}{origin}: loaded {len(self.loaded)} tensors, skipped '
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


MIN_BACKBONE_SHARE = 0.5  # fewer matching backbone tensors than this share: not this model's weights


def load_pretrained_backbone(model: nn.Module, path, allow_pickle: bool = False, *, progress: bool = True,
                             pretrained_cfg_overlay: Mapping | None = None) -> BackboneLoadReport:
    """Load ImageNet-1k/21k weights (paper InPlaceABN or timm layout) into ``model`` except the classifier.

    ``path``: a local file, ``timm:<name>`` (e.g. ``timm:tresnet_m.miil_in21k``), a URL or a ``csl:``
    alias (see `read_checkpoint`, which ``progress`` and ``pretrained_cfg_overlay`` are passed to).

    Tensors whose shape differs from the model's are skipped and reported; the classifier (``head.fc*``
    for TResNets) is never loaded. Raises CheckpointError (a ValueError) when fewer than
    ``MIN_BACKBONE_SHARE`` (half) of the model's backbone tensors (classifier and ``num_batches_tracked``
    excluded) are in the file with the same name and shape: such a file holds another architecture, and
    training on would be training from scratch after a one-line report. A partial match above that share
    (e.g. a stage resized) loads, and the report lists what was skipped. ``allow_pickle``: see
    `read_checkpoint_file`. Prints nothing: the returned report's ``str()`` is the summary for the caller
    to print.
    """
    path = os.fspath(path)
    checkpoint, source = read_checkpoint(path, allow_pickle, progress=progress,
                                         pretrained_cfg_overlay=pretrained_cfg_overlay)
    state_dict = to_timm_layout(extract_state_dict(checkpoint, path))
    target = getattr(model, '_orig_mod', model)
    own = target.state_dict()
    classifier = _classifier_prefix(target)
    report = BackboneLoadReport(path=path, source=source)
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
    backbone = [k for k in own
                if not k.startswith(classifier + '.') and not k.endswith('num_batches_tracked')]
    report.missing = [k for k in backbone if k not in to_load]
    matched = len(backbone) - len(report.missing)
    if matched < MIN_BACKBONE_SHARE * len(backbone) or not to_load:
        arch = getattr(target, 'model_name', type(target).__name__)
        raise CheckpointError(
            f'{path!r} does not hold a {arch} backbone: only {matched} of its {len(backbone)} backbone '
            f'tensors are in the file with the same name and shape (the file has {len(state_dict)} '
            f'tensors, e.g. {list(state_dict)[:3]}; {len(report.skipped_shape)} with another shape). Pass '
            f'--model-path with ImageNet weights of {arch} (a file in the paper\'s InPlaceABN or timm '
            f'layout, or timm:<name>, e.g. timm:tresnet_m.miil_in21k for tresnet_m), set '
            f'--model-name to the architecture of this file, or use --model-path none to train from scratch')
    target.load_state_dict(to_load, strict=False)
    return report
