"""Model factory: timm TResNets (and any other timm model) with the paper's heads and options.
Gradient checkpointing: timm's recomputation in backward updates each BatchNorm's running statistics twice
per step; for TResNets :class:`CheckpointedSequential` restores them after the recomputation, so they match
a run without checkpointing (other timm models keep timm's double update). `create_model` takes typed
keywords; `build_model_from_args` parses a namespace (train.py's, or the paper's ``create_model(args)``)."""

from __future__ import annotations

import contextlib
import inspect
import numbers
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from types import SimpleNamespace

import timm
import torch
import torch.utils.checkpoint
from timm.models.tresnet import TResNet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from src.models.boostlu import classifier_slot, install_boostlu
from src.models.checkpoint_convert import TRESNET_ARCHS
from src.utils.distributed import unwrap_model

TRESNET_NAMES = tuple(TRESNET_ARCHS)
DEFAULT_BOTTLENECK_FEATURES = 512
DEFAULT_MODEL_NAME = 'tresnet_m'  # the paper's default (--model_name)


class BottleneckHead(nn.Module):
    """The paper's OpenImages classifier: Linear(features -> 512), Linear(512 -> classes), no activation
    between (timm's ``reset_classifier`` would make it plain again)."""

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
    """nn.Sequential that checkpoints each child (same state-dict keys), BatchNorm statistics updated once."""

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


def _require_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f'{name} must be True or False, got {value!r}')
    return value


def _require_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f'{name} must be a positive integer (e.g. 80 classes for COCO), got {value!r}')
    return int(value)


def _require_rate(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f'{name} must be a number in [0, 1), got {value!r}')
    return float(value)


def create_model(args=None, /, *, model_name: str | None = None, num_classes: int | None = None,
                 do_bottleneck_head: bool = False, bottleneck_features: int = DEFAULT_BOTTLENECK_FEATURES,
                 grad_checkpointing: bool = False, channels_last: bool = False,
                 drop_path_rate: float = 0.0, boostlu_alpha: float | None = None,
                 output_stride: int | None = None) -> nn.Module:
    """A classifier from typed keywords ('80' or 'true' is an error); ``create_model(args)`` with a namespace
    only is the paper's call. ``channels_last`` converts the parameters: feed channels_last inputs."""
    if args is not None:
        given = locals()
        defaults = inspect.signature(create_model).parameters.values()
        mixed = sorted(p.name for p in defaults if p.name != 'args' and given[p.name] != p.default)
        if mixed:
            raise TypeError(f'create_model(args) reads every setting from args; got keywords {mixed} too. '
                            'Pass either the namespace or keywords')
        return build_model_from_args(args)
    if model_name is None or num_classes is None:
        raise ValueError('create_model needs model_name=... and num_classes=... (or a namespace with '
                         'model_name and num_classes: create_model(args))')
    if not isinstance(model_name, str):
        raise ValueError(f'model_name must be a timm model name (str), got {model_name!r}')
    num_classes = _require_positive_int(num_classes, 'num_classes')
    do_bottleneck_head = _require_bool(do_bottleneck_head, 'do_bottleneck_head')
    bottleneck_features = _require_positive_int(bottleneck_features, 'bottleneck_features')
    grad_checkpointing = _require_bool(grad_checkpointing, 'grad_checkpointing')
    channels_last = _require_bool(channels_last, 'channels_last')
    drop_path_rate = _require_rate(drop_path_rate, 'drop_path_rate')
    if not timm.is_model(model_name):
        raise ValueError(f'model_name {model_name!r} is not a timm model; use one of {TRESNET_NAMES} '
                         'or any name listed by timm.list_models()')
    # pretrained=False: weights come from load_model / load_pretrained_backbone
    # output_stride (timm's dilation; None: the model's own): the size of the map the head pools
    if output_stride not in (None, 8, 16, 32):
        raise ValueError(f'output_stride must be 8, 16 or 32 (None: the model\'s), got {output_stride!r}')
    stride = {} if output_stride is None else {'output_stride': int(output_stride)}
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                              drop_path_rate=drop_path_rate, **stride)
    if do_bottleneck_head:
        parent, attr, _ = classifier_slot(model, 'do_bottleneck_head')
        old = getattr(parent, attr)
        in_features = old.in_features if isinstance(old, nn.Linear) else model.num_features
        setattr(parent, attr, BottleneckHead(in_features, num_classes, bottleneck_features))
    model.model_name = model_name
    model.num_classes = num_classes
    model.do_bottleneck_head = do_bottleneck_head
    model.bottleneck_features = bottleneck_features if do_bottleneck_head else None
    model.boostlu_alpha = None
    model.output_stride = output_stride
    if boostlu_alpha is not None:
        install_boostlu(model, boostlu_alpha)
    if grad_checkpointing:
        set_grad_checkpointing(model, True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ('true', 'yes', '1', 'false', 'no', '0'):
        return value.strip().lower() in ('true', 'yes', '1')
    raise ValueError(f'{name} must be a boolean (true/false), got {value!r}')


def parse_positive_int(value, name: str) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise ValueError(f'{name} must be a positive integer (e.g. 80 for COCO), got {value!r}')
    return number


def resolve_bottleneck_head(do_bottleneck_head, dataset_type) -> bool:
    """--do_bottleneck_head as given, or when None the paper's choice: on for openimages only."""
    if do_bottleneck_head is None:
        return str(dataset_type).lower() == 'openimages'
    return parse_bool(do_bottleneck_head, 'do_bottleneck_head')


def _optional_float(value, name: str) -> float | None:
    if value is None or isinstance(value, float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a number, got {value!r}') from None


def build_model_from_args(args) -> nn.Module:
    """The model that a namespace (or dict) describes; strings ('80', 'true') are parsed and a missing
    attribute takes create_model's default (``model_name`` 'tresnet_m')."""
    if isinstance(args, Mapping):
        args = SimpleNamespace(**args)
    num_classes = getattr(args, 'num_classes', None)
    if num_classes is None:
        raise ValueError('the model needs num_classes (--num-classes, or args.num_classes)')
    model_name = getattr(args, 'model_name', DEFAULT_MODEL_NAME)
    if model_name is None:
        raise ValueError('the model needs model_name (--model-name, e.g. tresnet_m)')
    return create_model(
        model_name=str(model_name).strip().lower(),
        num_classes=parse_positive_int(num_classes, 'num_classes'),
        do_bottleneck_head=resolve_bottleneck_head(getattr(args, 'do_bottleneck_head', None),
                                                   getattr(args, 'dataset_type', None)),
        bottleneck_features=parse_positive_int(
            getattr(args, 'bottleneck_features', DEFAULT_BOTTLENECK_FEATURES), 'bottleneck_features'),
        grad_checkpointing=parse_bool(getattr(args, 'grad_checkpointing', False), 'grad_checkpointing'),
        channels_last=parse_bool(getattr(args, 'channels_last', False), 'channels_last'),
        drop_path_rate=float(getattr(args, 'drop_path_rate', 0.0)),
        boostlu_alpha=_optional_float(getattr(args, 'boostlu_alpha', None), 'boostlu_alpha'),
        output_stride=getattr(args, 'output_stride', None),
    )


def model_metadata(model: nn.Module) -> dict:
    model = unwrap_model(model)
    return {
        'model_name': getattr(model, 'model_name', None),
        'num_classes': int(model.num_classes),
        'do_bottleneck_head': bool(getattr(model, 'do_bottleneck_head', False)),
        'bottleneck_features': getattr(model, 'bottleneck_features', None),
        'boostlu_alpha': getattr(model, 'boostlu_alpha', None),
        'output_stride': getattr(model, 'output_stride', None),
    }


def check_model_classes(model_classes: Sequence[str], dataset_classes: Sequence[str],
                        dataset: str) -> str | None:
    """Refuse another class count, or the same names in another order; other names (OpenImages MIDs in a
    paper checkpoint vs display names) are accepted trusting the order, with the returned note to print."""
    model_classes, dataset_classes = list(model_classes), list(dataset_classes)
    if len(model_classes) != len(dataset_classes):
        raise ValueError(f"--model-path: the model predicts {len(model_classes)} classes but {dataset} has "
                         f"{len(dataset_classes)}; pass a checkpoint trained on this dataset (or the right "
                         f"--dataset_type)")
    if model_classes == dataset_classes or all(n == f"class_{i}" for i, n in enumerate(model_classes)):
        return None
    if sorted(model_classes) == sorted(dataset_classes):
        raise ValueError(f"--model-path: the checkpoint lists the classes of {dataset} in another order "
                         f"(e.g. {model_classes[:3]} vs {dataset_classes[:3]}); its scores would be paired "
                         f"with the wrong classes. Use the annotation files it was trained with")
    differing = sum(a != b for a, b in zip(model_classes, dataset_classes))
    return (f"note: {differing} of {len(model_classes)} class names of the checkpoint differ from those of "
            f"{dataset} (e.g. {model_classes[0]!r} vs {dataset_classes[0]!r}); assuming the same class order")


def maybe_compile(model: nn.Module, enabled: bool, device) -> nn.Module:
    """``torch.compile(model)`` on CUDA only; a UserWarning says when it is skipped."""
    if enabled and torch.device(device).type == 'cuda':
        if any(isinstance(m, CheckpointedSequential) for m in model.modules()):
            warnings.warn('torch.compile with gradient checkpointing: the checkpointed stages run eagerly',
                          stacklevel=2)
        return torch.compile(model)
    if enabled:
        warnings.warn(f'torch.compile skipped: only used on CUDA (device is {device})', stacklevel=2)
    return model
