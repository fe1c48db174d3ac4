"""Models: timm TResNets with the paper's heads, and loaders for the paper's / ImageNet / our checkpoints
(local files, or on demand: ``timm:<name>``, URLs and ``csl:<name>`` aliases, see ``src.models.hub``)."""

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
from src.models.hub import (
    CSL_MODEL_ZOO,
    WeightsDownloadError,
    WeightsSourceError,
    WeightsSpec,
    cached_download,
    is_remote_weights,
    parse_weights_spec,
    resolve_weights_file,
    timm_pretrained_checkpoint,
    weights_stem,
)
from src.models.loading import (
    EVAL_SETTING_FLAGS,
    BackboneLoadReport,
    LoadedModel,
    build_model_from_checkpoint,
    extract_state_dict,
    load_model,
    load_model_for_command,
    load_pretrained_backbone,
    read_checkpoint,
    resolve_model_settings,
    to_timm_layout,
)
from src.utils.checkpoint import CheckpointError, CheckpointNotFoundError, read_pth

__all__ = [
    'CSL_MODEL_ZOO', 'EVAL_SETTING_FLAGS', 'TRESNET_ARCHS', 'TRESNET_NAMES', 'BackboneLoadReport',
    'BottleneckHead', 'CheckpointError', 'CheckpointNotFoundError', 'LoadedModel', 'WeightsDownloadError',
    'WeightsSourceError', 'WeightsSpec', 'build_model_from_args', 'build_model_from_checkpoint',
    'cached_download', 'check_model_classes', 'convert_original_to_timm', 'create_model',
    'extract_state_dict', 'infer_tresnet_name', 'is_original_tresnet_layout', 'is_remote_weights',
    'load_model', 'load_model_for_command', 'load_pretrained_backbone', 'maybe_compile', 'model_metadata',
    'parse_weights_spec', 'read_checkpoint', 'read_pth', 'resolve_bottleneck_head', 'resolve_model_settings',
    'resolve_weights_file', 'set_grad_checkpointing', 'timm_pretrained_checkpoint', 'to_timm_layout',
    'weights_stem',
]
