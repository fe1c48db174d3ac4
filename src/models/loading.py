"""Loading weights: the paper's checkpoints (``{'model', 'num_classes', 'idx_to_class'}``, InPlaceABN
layout converted), ImageNet backbones, bare or wrapped state dicts and our own checkpoints.

The checkpoint owns a model's settings (`resolve_model_settings`): a flag that disagrees is used where that
is meaningful (another image size, with one printed line) and refused where the result would be wrong."""

from __future__ import annotations

import os
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
from src.models.hub import cached_download, parse_weights_spec, timm_pretrained_checkpoint
from src.utils.checkpoint import CheckpointError, read_pth, recorded_args
from src.utils.cli import ConfigError
from src.utils.values import IMAGE_SIZE_BOUND, printable, within

_EMA_KEYS = ('ema', 'model_ema', 'state_dict_ema')
# A flag that disagrees with the checkpoint is used (with one printed line) where that is meaningful, i.e.
# evaluating at another image size; refused for the rest (another architecture or class count).
USED_WHEN_DIFFERENT = {'image_size': 'the checkpoint was trained at {stored}: evaluating at {value}'}
SETTING_LABELS = {'image_size': 'image_size', 'model_name': 'model', 'num_classes': 'classes',
                  'do_bottleneck_head': 'bottleneck head', 'boostlu_alpha': 'boostlu', 'batch_size': 'batch'}
# The settings of src.args' data and model flags that a checkpoint answers: setting -> (flag, attribute).
EVAL_SETTING_FLAGS = {'image_size': ('--image-size', 'image_size'),
                      'model_name': ('--model-name', 'model_name'), 'batch_size': ('-b', 'batch_size')}
MIN_BACKBONE_SHARE = 0.5  # fewer matching backbone tensors than this share: not this model's weights


def read_checkpoint(spec, allow_pickle: bool = False, *, progress: bool = True,
                    pretrained_cfg_overlay: Mapping | None = None, flag: str | None = None):
    """(checkpoint, source) for any ``--model-path`` value (``src.models.hub``); ``source``: the local file
    read, or timm's source. ``flag``: the option that named ``spec``, for the errors."""
    parsed = parse_weights_spec(spec)
    if parsed.kind == 'local':
        return read_pth(parsed.location, allow_pickle=allow_pickle, flag=flag), parsed.location
    if parsed.kind == 'timm':
        checkpoint = timm_pretrained_checkpoint(
            parsed.location, pretrained_cfg_overlay=pretrained_cfg_overlay, spec=parsed.spec)
        return checkpoint, checkpoint['source']
    cached = cached_download(parsed.location, parsed.sha256, progress=progress)
    try:
        return read_pth(cached.path, allow_pickle=allow_pickle, flag=flag), cached.path
    except CheckpointError as error:
        raise CheckpointError(f'{parsed.spec} (read from {cached.path}): {error}') from error


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items())


def extract_state_dict(checkpoint, path='checkpoint', use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint, wrapper prefixes stripped, the paper's InPlaceABN layout converted."""
    obj = checkpoint
    if use_ema:
        ema_key = next((k for k in _EMA_KEYS if isinstance(obj, Mapping) and obj.get(k) is not None), None)
        if ema_key is None:
            raise CheckpointError(f'{path!r} has no EMA weights (no "ema" entry); load it with use_ema=False')
        obj = obj[ema_key]
    for _ in range(3):  # a few wrapper levels, e.g. {'model': {'state_dict': ...}}
        if _is_state_dict(obj):
            state_dict = strip_wrapper_prefixes(obj)
            if is_original_tresnet_layout(state_dict):
                return convert_original_to_timm(state_dict)
            return state_dict
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


def _class_names(fields: Mapping, num_classes: int, path) -> list[str]:
    if fields.get('class_names') is not None:
        names = [str(name) for name in fields['class_names']]
    elif isinstance(fields.get('idx_to_class'), Mapping):
        idx_to_class = {int(idx): str(name) for idx, name in fields['idx_to_class'].items()}
        if sorted(idx_to_class) != list(range(len(idx_to_class))):
            raise CheckpointError(f'{path!r}: idx_to_class keys must be 0..N-1')
        names = [idx_to_class[i] for i in range(len(idx_to_class))]
    else:
        return [f'class_{i}' for i in range(num_classes)]
    if len(names) != num_classes:
        raise CheckpointError(f'{path!r} lists {len(names)} class names but its head has {num_classes} '
                              'outputs')
    return names


def _resolve_model_name(state_dict, fields: Mapping, model_name, path, flag) -> str:
    """The file's tensor shapes or ``model_name``; the option ``flag`` only where the file says neither."""
    stored, inferred = fields.get('model_name'), infer_tresnet_name(state_dict)
    if is_timm_tresnet_layout(state_dict) and inferred is None:
        layers, width, v2 = describe_tresnet_arch(state_dict)
        raise CheckpointError(f'{path!r} holds a TResNet with blocks {list(layers)}, stem width {width}, '
                              f'v2={v2}, which matches none of {dict(TRESNET_ARCHS)} (blocks, width, v2)')
    if stored is not None and inferred is not None and str(stored).lower() != inferred:
        raise CheckpointError(f'{path!r} holds a {inferred} (from its tensor shapes) but its model_name '
                              f'says {stored!r}; the file is inconsistent')
    known, source = (inferred, 'tensor shapes') if inferred is not None else (stored, 'model_name')
    known = None if known is None else str(known).lower()
    if model_name is not None and known is not None and str(model_name).lower() != known:
        raise CheckpointError(f'{path!r} holds a {known} (from its {source}) but {flag} says {model_name!r}; '
                              f'drop {flag} or pass {flag} {known}')
    if known is None and model_name is None:
        raise CheckpointError(f'cannot tell the architecture of {path!r}: it is not a TResNet layout and '
                              f'stores no model_name; pass {flag} (any timm model name)')
    return known or str(model_name).lower()


def _resolve_head(state_dict, fields: Mapping, model_name, path) -> dict:
    info = head_info(state_dict, find_bottleneck_classifier(state_dict) or 'head.fc')
    if info is None and fields.get('num_classes') is not None:
        info = {'do_bottleneck_head': bool(fields.get('do_bottleneck_head', False)),
                'num_classes': int(fields['num_classes'])}
    if info is None:  # plain classifier of a non-TResNet timm model: ask the model where it is
        probe = create_model(model_name=model_name, num_classes=1)
        info = head_info(state_dict, probe.pretrained_cfg.get('classifier', 'head.fc'))
    if info is None:
        raise CheckpointError(f'{path!r}: cannot find the classifier of {model_name} in the state dict '
                              'and the file stores no num_classes')
    if fields.get('num_classes') is not None and int(fields['num_classes']) != info['num_classes']:
        raise CheckpointError(f'{path!r} says num_classes={fields["num_classes"]} but its head has '
                              f'{info["num_classes"]} outputs')
    return info


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           path='checkpoint') -> None:
    """Strict load that fills absent ``num_batches_tracked`` (older files) and explains mismatches."""
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


def build_model_from_checkpoint(checkpoint, path, model_name: str | None = None, *, use_ema: bool = False,
                                flag: str = 'model_name') -> tuple[nn.Module, list[str], dict]:
    """(model in eval mode on CPU, class names, architecture) of a read checkpoint, loaded strictly. The
    head comes from the tensors; class names from ``class_names`` or ``idx_to_class``, else 'class_<i>'."""
    path = os.fspath(path)
    fields = checkpoint if isinstance(checkpoint, Mapping) else {}
    state_dict = extract_state_dict(checkpoint, path, use_ema=use_ema)
    name = _resolve_model_name(state_dict, fields, model_name, path, flag)
    head = _resolve_head(state_dict, fields, name, path)
    model = create_model(model_name=name, num_classes=head['num_classes'],
                         do_bottleneck_head=head['do_bottleneck_head'],
                         bottleneck_features=head.get('bottleneck_features', 512),
                         boostlu_alpha=fields.get('boostlu_alpha'), output_stride=fields.get('output_stride'))
    load_state_dict_strict(model, state_dict, path)
    architecture = {'model_name': name, 'num_classes': head['num_classes'],
                    'do_bottleneck_head': head['do_bottleneck_head'],
                    'boostlu_alpha': fields.get('boostlu_alpha'),
                    'output_stride': fields.get('output_stride')}
    return model.eval(), _class_names(fields, head['num_classes'], path), architecture


def load_model(path, model_name: str | None = None, device='cpu', use_ema: bool = False,
               allow_pickle: bool = False, *, progress: bool = True,
               pretrained_cfg_overlay: Mapping | None = None) -> tuple[nn.Module, list[str]]:
    """(model in eval mode on ``device``, class names)."""
    checkpoint, _ = read_checkpoint(path, allow_pickle, progress=progress,
                                    pretrained_cfg_overlay=pretrained_cfg_overlay)
    model, class_names, _ = build_model_from_checkpoint(checkpoint, path, model_name, use_ema=use_ema)
    return model.to(device), class_names


def _valid_size(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and within(value, IMAGE_SIZE_BOUND)


def resolve_model_settings(checkpoint, architecture: Mapping, given: Mapping[str, tuple[str, object]],
                           defaults: Mapping[str, object], path='checkpoint') -> tuple[dict, dict, list[str]]:
    """(settings, provenance 'checkpoint' / 'flag' / 'default', notes) a command runs with. ``given``:
    setting -> (flag, value or None); ``defaults``: where neither says (the paper's files record no size)."""
    recorded = dict(architecture)
    size = recorded_args(checkpoint).get('image_size')
    if size is not None and _valid_size(size):
        recorded['image_size'] = int(size)
    elif size is not None and given.get('image_size', (None, None))[1] is None:
        raise CheckpointError(f'{path!r} stores image_size {size!r}, which is not {IMAGE_SIZE_BOUND}; '
                              f'pass {given.get("image_size", ("--image-size",))[0]}')
    settings, sources, notes = {}, {}, []
    for key in dict.fromkeys([*recorded, *given, *defaults]):
        flag, value = given.get(key, (None, None))
        if value is None:
            settings[key], sources[key] = ((recorded[key], 'checkpoint') if key in recorded
                                           else (defaults.get(key), 'default'))
            continue
        settings[key], sources[key], stored = value, 'flag', recorded.get(key)
        if stored is None or str(value).lower() == str(stored).lower():
            continue
        if key not in USED_WHEN_DIFFERENT:
            raise ConfigError(f'{flag} {value} contradicts the checkpoint {path!r}, which holds {key} '
                              f'{stored}: the result would be wrong; drop {flag} (or pass the checkpoint it '
                              'describes)')
        notes.append(f'{flag} {value} given; ' + USED_WHEN_DIFFERENT[key].format(stored=stored, value=value))
    return settings, sources, notes


@dataclass
class LoadedModel:
    """A checkpoint's model (eval mode, on CPU), its class names and the settings a command runs with."""

    model: nn.Module
    class_names: list[str]
    settings: dict
    sources: dict
    notes: list[str]

    def report(self) -> str:
        """``settings: image_size 32 (checkpoint), model test_resnet (checkpoint), ...``, then the notes."""
        shown = [key for key in SETTING_LABELS if key in self.settings
                 and not (key == 'boostlu_alpha' and self.settings[key] is None)]
        parts = [f'{SETTING_LABELS[key]} {printable(self.settings[key])} ({self.sources[key]})'
                 for key in shown]
        return '\n'.join(['settings: ' + ', '.join(parts), *self.notes])


def load_model_for_command(args, flags: Mapping[str, tuple[str, str]], defaults: Mapping,
                           path_flag: str = '--model-path') -> LoadedModel:
    """Read ``args.model_path`` once, build its model and resolve the settings of ``flags`` (setting ->
    (flag, attribute of ``args``)), which are written back to ``args``."""
    checkpoint, _ = read_checkpoint(args.model_path, args.unsafe_pickle, flag=path_flag)
    given = {key: (flag, getattr(args, attr)) for key, (flag, attr) in flags.items()}
    model_flag, model_name = given.get('model_name', ('model_name', None))
    model, class_names, architecture = build_model_from_checkpoint(
        checkpoint, args.model_path, model_name, use_ema=getattr(args, 'use_ema', False), flag=model_flag)
    loaded = LoadedModel(model, class_names,
                         *resolve_model_settings(checkpoint, architecture, given, defaults, args.model_path))
    for key, (_, attr) in flags.items():
        setattr(args, attr, loaded.settings[key])
    return loaded


@dataclass
class BackboneLoadReport:
    """What `load_pretrained_backbone` did, by state-dict key; ``str()``: the summary to print."""

    path: str
    loaded: list[str] = field(default_factory=list)
    skipped_classifier: list[str] = field(default_factory=list)
    skipped_unexpected: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    source: str | None = None

    def __str__(self) -> str:
        origin = f' ({self.source})' if self.source and self.source != self.path else ''
        skipped = len(self.skipped_classifier) + len(self.skipped_unexpected) + len(self.skipped_shape)
        lines = [f'pretrained backbone {self.path}{origin}: loaded {len(self.loaded)} tensors, skipped '
                 f'{skipped} ({len(self.skipped_classifier)} classifier, '
                 f'{len(self.skipped_unexpected)} not in model, {len(self.skipped_shape)} shape mismatch), '
                 f'missing {len(self.missing)}']
        for title, keys in (('shape mismatch', self.skipped_shape), ('not in model', self.skipped_unexpected),
                            ('missing (kept initialised)', self.missing)):
            if keys:
                lines.append(f'  {title}: {keys[:8]}{" ..." if len(keys) > 8 else ""}')
        return '\n'.join(lines)


def load_pretrained_backbone(model: nn.Module, path, allow_pickle: bool = False, *, progress: bool = True,
                             pretrained_cfg_overlay: Mapping | None = None) -> BackboneLoadReport:
    """Load ImageNet weights into ``model`` except the classifier, skipping other shapes. Fewer than
    ``MIN_BACKBONE_SHARE`` matching is an error: training on would silently be training from scratch."""
    path = os.fspath(path)
    checkpoint, source = read_checkpoint(path, allow_pickle, progress=progress,
                                         pretrained_cfg_overlay=pretrained_cfg_overlay)
    state_dict = extract_state_dict(checkpoint, path)
    target = getattr(model, '_orig_mod', model)
    own = target.state_dict()
    classifier = getattr(target, 'pretrained_cfg', {}).get('classifier', 'head.fc')
    classifier = classifier if isinstance(classifier, str) else classifier[0]
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
