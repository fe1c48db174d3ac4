"""Models: timm TResNets with the paper's heads, and loaders for the paper's / ImageNet / our checkpoints."""

from src.models.checkpoint_convert import (
    TRESNET_ARCHS,
    convert_original_to_timm,
    infer_tresnet_name,
    is_original_tresnet_layout,
)
from src.models.factory import (
    TRESNET_NAMES,
    BottleneckHead,
    build_model_from_args,
    check_model_classes,
    create_model,
    maybe_compile,
    model_metadata,
    resolve_bottleneck_head,
    set_grad_checkpointing,
)
from src.models.loading import (
    BackboneLoadReport,
    CheckpointError,
    CheckpointNotFoundError,
    extract_state_dict,
    load_model,
    load_pretrained_backbone,
    read_checkpoint_file,
    to_timm_layout,
)

__all__ = [
    'TRESNET_ARCHS', 'TRESNET_NAMES', 'BackboneLoadReport', 'BottleneckHead', 'CheckpointError',
    'CheckpointNotFoundError', 'build_model_from_args', 'check_model_classes', 'convert_original_to_timm',
    'create_model', 'extract_state_dict', 'infer_tresnet_name', 'is_original_tresnet_layout', 'load_model',
    'load_pretrained_backbone', 'maybe_compile', 'model_metadata', 'read_checkpoint_file',
    'resolve_bottleneck_head', 'set_grad_checkpointing', 'to_timm_layout',
]
