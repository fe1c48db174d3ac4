"""Models: timm TResNets with the paper's heads, and loaders for the paper's / ImageNet / our checkpoints
(local files, or on demand: ``timm:<name>``, URLs and ``csl:<name>`` aliases, see ``src.models.hub``)."""

from src.models.checkpoint_convert import convert_original_to_timm, infer_tresnet_name
from src.models.factory import (
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
    cached_download,
    is_remote_weights,
    parse_weights_spec,
    timm_pretrained_checkpoint,
    weights_stem,
)
from src.models.loading import (
    EVAL_SETTING_FLAGS,
    extract_state_dict,
    load_model,
    load_model_for_command,
    load_pretrained_backbone,
    read_checkpoint,
)
from src.utils.checkpoint import CheckpointError, CheckpointNotFoundError, read_pth

