"""Model factory: timm TResNets (and any other timm model) with the paper's heads and options.

Heads. COCO models end in a plain ``Linear(num_features -> num_classes)`` at ``head.fc``. The paper's
OpenImages models use a bottleneck head at the same place: ``Linear(num_features -> 512)`` then
``Linear(512 -> num_classes)`` with no activation in between (as in the paper's TResNet code), stored as
``head.fc.embedding_generator.0.*`` and ``head.fc.FC.*``. timm's ``reset_classifier`` would replace a
bottleneck head by a plain one; create a new model instead.

Gradient checkpointing. timm's TResNet checkpoints every block and recomputes it in the backward pass
in training mode, so each BatchNorm updates its running statistics twice per step: with momentum m the
update becomes ``r <- (1-m)^2 r + (1-(1-m)^2) batch`` instead of ``(1-m) r + m batch``. For TResNets we
therefore do the checkpointing ourselves (:class:`CheckpointedSequential`): the recomputation runs
inside a context that restores the BatchNorm buffers afterwards, so running statistics (and
``num_batches_tracked``) match a run without checkpointing, while outputs and gradients are unchanged
(the recomputation still normalises with the batch statistics). Under torch.compile the checkpointed
stages run eagerly. For other timm models timm's own checkpointing is used and the double update
remains (documented, not corrected).

``channels_last`` converts the parameters only; feed channels_last inputs for the speed-up.
``torch.compile`` is applied by :func:`maybe_compile` only when asked for and on CUDA.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence

import timm
import torch
import torch.utils.checkpoint
from timm.models.tresnet import TResNet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from src.models.checkpoint_convert import TRESNET_ARCHS

TRESNET_NAMES = tuple(TRESNET_ARCHS)
DEFAULT_BOTTLENECK_FEATURES = 512

# name -> default; read from kwargs first, then from args (attribute or mapping key).
_SETTINGS = {
    'model_name': 'tresnet_m',
    'num_classes': None,
    'do_bottleneck_head': False,
    'bottleneck_features': DEFAULT_BOTTLENECK_FEATURES,
    'grad_checkpointing': False,
    'channels_last': False,
    'drop_path_rate': 0.0,
}


class BottleneckHead(nn.Module):
    """The paper's OpenImages classifier: Linear(features -> bottleneck), Linear(bottleneck -> classes)."""

    def __init__(self, in_features: int, num_classes: int, bottleneck_features: int = 512):
        super().__init__()
        self.embedding_generator = nn.Sequential(nn.Linear(in_features, bottleneck_features))
        self.FC = nn.Linear(bottleneck_features, num_classes)
        for linear in (self.embedding_generator[0], self.FC):
            nn.init.normal_(linear.weight, 0.0, 0.01)  # same scale as the paper's Linear init
            nn.init.zeros_(linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.FC(self.embedding_generator(features))


@contextlib.contextmanager
def _restore_norm_buffers(module: nn.Module) -> Iterator[None]:
    """Undo the running-statistics update that a checkpoint recomputation makes (see module doc)."""
    norms = [m for m in module.modules()
             if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    saved = [[buffer.clone() for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)]
             for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, (mean, var, count) in zip(norms, saved):
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(count)


class CheckpointedSequential(nn.Sequential):
    """nn.Sequential that checkpoints each child; same children and state-dict keys as the original.

    The recomputation in the backward pass restores the children's BatchNorm buffers, so each
    training step updates the running statistics exactly once. Under ``torch.compile`` these stages
    stay eager (graph break), so compile speeds up only the rest of the model.
    """

    # Run eagerly under torch.compile: dynamo cannot trace a custom context_fn, and (torch 2.14) a compiled
    # checkpoint around BatchNorm fails in backward (in-place num_batches_tracked) - timm's checkpointing too.
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        for child in self:
            def contexts(child=child):
                return contextlib.nullcontext(), _restore_norm_buffers(child)
            x = torch.utils.checkpoint.checkpoint(child, x, use_reentrant=False, context_fn=contexts)
        return x


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Turn gradient checkpointing on/off; for TResNets without the double BatchNorm update."""
    if not isinstance(model, TResNet):
        model.set_grad_checkpointing(enabled)  # timm's own: BatchNorm statistics update twice per step
        return
    model.set_grad_checkpointing(False)  # timm's path stays off, the stages checkpoint themselves
    for name, stage in list(model.body.named_children()):
        if not name.startswith('layer'):
            continue
        stage_cls = CheckpointedSequential if enabled else nn.Sequential
        if type(stage) is not stage_cls:
            setattr(model.body, name, stage_cls(OrderedDict(stage.named_children())))


def _read_setting(args, kwargs: dict, name: str):
    if name in kwargs:
        return kwargs[name]
    if isinstance(args, Mapping):
        return args.get(name, _SETTINGS[name])
    return getattr(args, name, _SETTINGS[name])


def parse_bool(value, name: str) -> bool:
    """bool from a bool, 0/1 or a command-line string ('true'/'false', 'yes'/'no', '1'/'0')."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ('true', 'yes', '1', 'false', 'no', '0'):
        return value.strip().lower() in ('true', 'yes', '1')
    raise ValueError(f'{name} must be a boolean (true/false), got {value!r}')


def parse_num_classes(value, source: str = 'num_classes') -> int:
    """Positive int from an int or a command-line string such as '80'."""
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise ValueError(f'{source} must be a positive integer (e.g. 80 for COCO), got {value!r}')
    return number


def _build_timm_model(model_name: str, num_classes: int, drop_path_rate: float) -> nn.Module:
    if not timm.is_model(model_name):
        raise ValueError(f'model_name {model_name!r} is not a timm model; use one of {TRESNET_NAMES} '
                         'or any name listed by timm.list_models()')
    # pretrained=False always: weights come only from local files (load_model / load_pretrained_backbone).
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                             drop_path_rate=float(drop_path_rate))


def _install_bottleneck_head(model: nn.Module, num_classes: int, bottleneck_features: int) -> None:
    classifier_name = model.pretrained_cfg.get('classifier', 'head.fc')
    if not isinstance(classifier_name, str):
        raise ValueError(f'do_bottleneck_head is not supported for {model.pretrained_cfg.get("architecture")}'
                         f' (several classifiers: {classifier_name}); use do_bottleneck_head=False')
    parent_name, _, attr = classifier_name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    in_features = old.in_features if isinstance(old, nn.Linear) else model.num_features
    setattr(parent, attr, BottleneckHead(in_features, num_classes, bottleneck_features))


def create_model(args=None, **kwargs) -> nn.Module:
    """Build a classifier; settings come from ``kwargs``, then ``args`` (namespace or dict), then defaults.

    Settings: model_name ('tresnet_m', 'tresnet_l', 'tresnet_xl', 'tresnet_v2_l' or any timm name),
    num_classes (required; strings like '80' accepted), do_bottleneck_head (OpenImages head),
    bottleneck_features (512), grad_checkpointing, channels_last, drop_path_rate. Nothing is
    downloaded: load weights with :func:`src.models.load_pretrained_backbone` or ``load_model``.
    The model gets attributes ``model_name``, ``num_classes``, ``do_bottleneck_head`` and
    ``bottleneck_features`` (see :func:`model_metadata`).
    """
    unknown = set(kwargs) - set(_SETTINGS)
    if unknown:
        if kwargs.get('pretrained'):
            raise ValueError('create_model(pretrained=True) is not supported (nothing is downloaded); '
                             'use load_pretrained_backbone(model, path) with a local file')
        raise ValueError(f'create_model got unknown settings {sorted(unknown)}; known: {sorted(_SETTINGS)}')
    settings = {name: _read_setting(args, kwargs, name) for name in _SETTINGS}
    if settings['num_classes'] is None:
        raise ValueError('create_model needs num_classes (args.num_classes or num_classes=...)')
    model_name = str(settings['model_name']).lower()
    num_classes = parse_num_classes(settings['num_classes'])
    do_bottleneck_head = parse_bool(settings['do_bottleneck_head'], 'do_bottleneck_head')
    bottleneck_features = parse_num_classes(settings['bottleneck_features'], 'bottleneck_features')

    model = _build_timm_model(model_name, num_classes, settings['drop_path_rate'])
    if do_bottleneck_head:
        _install_bottleneck_head(model, num_classes, bottleneck_features)
    model.model_name = model_name
    model.num_classes = num_classes
    model.do_bottleneck_head = do_bottleneck_head
    model.bottleneck_features = bottleneck_features if do_bottleneck_head else None
    if parse_bool(settings['grad_checkpointing'], 'grad_checkpointing'):
        set_grad_checkpointing(model, True)
    if parse_bool(settings['channels_last'], 'channels_last'):
        model = model.to(memory_format=torch.channels_last)
    return model


def model_metadata(model: nn.Module) -> dict:
    """The architecture fields our checkpoints store next to the state dict."""
    model = getattr(model, '_orig_mod', model)  # torch.compile wrapper
    model = getattr(model, 'module', model)  # DistributedDataParallel wrapper
    return {
        'model_name': getattr(model, 'model_name', None),
        'num_classes': int(model.num_classes),
        'do_bottleneck_head': bool(getattr(model, 'do_bottleneck_head', False)),
        'bottleneck_features': getattr(model, 'bottleneck_features', None),
    }


def check_num_classes(model: nn.Module, num_classes: int, source: str = 'the dataset') -> None:
    """Raise a clear error when the model's output size differs from the number of classes of ``source``."""
    model_classes = model_metadata(model)['num_classes']
    if model_classes != int(num_classes):
        raise ValueError(f'the model outputs {model_classes} classes but {source} has {num_classes}; '
                         'use a checkpoint trained on this class list, or set --num-classes to match')


def check_model_classes(model_classes: Sequence[str], dataset_classes: Sequence[str], dataset: str,
                        verbose: bool = True) -> None:
    """The model predicts the dataset's classes: same number (else ValueError); same names in the same
    order, unless the checkpoint stores no names ('class_<i>'). The same names in another order are an
    error (scores would be paired with the wrong classes); other names (e.g. OpenImages MIDs in a paper
    checkpoint vs display names in the dataset) only print a note (when ``verbose``: pass False on
    every rank but 0) and the order is trusted."""
    model_classes, dataset_classes = list(model_classes), list(dataset_classes)
    if len(model_classes) != len(dataset_classes):
        raise ValueError(f"--model-path: the model predicts {len(model_classes)} classes but {dataset} has "
                         f"{len(dataset_classes)}; pass a checkpoint trained on this dataset (or the right "
                         f"--dataset_type)")
    if model_classes == dataset_classes or all(n == f"class_{i}" for i, n in enumerate(model_classes)):
        return
    if sorted(model_classes) == sorted(dataset_classes):
        raise ValueError(f"--model-path: the checkpoint lists the classes of {dataset} in another order "
                         f"(e.g. {model_classes[:3]} vs {dataset_classes[:3]}); its scores would be paired "
                         f"with the wrong classes. Use the annotation files it was trained with")
    if not verbose:
        return
    differing = sum(a != b for a, b in zip(model_classes, dataset_classes))
    print(f"note: {differing} of {len(model_classes)} class names of the checkpoint differ from those of "
          f"{dataset} (e.g. {model_classes[0]!r} vs {dataset_classes[0]!r}); assuming the same class order")


def maybe_compile(model: nn.Module, enabled: bool, device) -> nn.Module:
    """``torch.compile(model)`` when enabled and ``device`` is CUDA; otherwise the model unchanged."""
    if enabled and torch.device(device).type == 'cuda':
        if any(isinstance(m, CheckpointedSequential) for m in model.modules()):
            print('torch.compile with gradient checkpointing: the checkpointed stages run eagerly')
        return torch.compile(model)
    if enabled:
        print(f'torch.compile skipped: only used on CUDA (device is {device})')
    return model
