"""Compatibility module: the import path of the paper's code.

The paper's code imports its metrics, COCO dataset and augmentations from
``src.helper_functions.helper_functions``. Here they live in the modules that own them: the metrics in
``src.metrics`` (re-exported below with the paper's signatures), ``CocoDetection`` in ``src.data.coco`` and
``CutoutPIL`` in ``src.data.transforms``. Those two are re-exported lazily, on first access, so that
``from src.helper_functions.helper_functions import mAP`` does not import torch and torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from src.metrics import AP_partial, average_precision, mAP, mAP_partial

if TYPE_CHECKING:  # for type checkers and linters; at run time they come from __getattr__
    from src.data.coco import CocoDetection
    from src.data.transforms import CutoutPIL

_LAZY_EXPORTS = {"CocoDetection": "src.data.coco", "CutoutPIL": "src.data.transforms"}

__all__ = ["AP_partial", "CocoDetection", "CutoutPIL", "average_precision", "mAP", "mAP_partial"]


def __getattr__(name: str):
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
