"""Compatibility module: the import path of the paper's code.

The paper's code imports its metrics, COCO dataset and augmentations from
``src.helper_functions.helper_functions``. Here they live in better-named modules
(``src.metrics``, ``src.data.coco``, ``src.data.transforms``); this module re-exports them
lazily so that ``from src.helper_functions.helper_functions import mAP, CocoDetection`` keeps
working without importing every heavy dependency up front.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "average_precision": "src.metrics",
    "mAP": "src.metrics",
    "AP_partial": "src.metrics",
    "mAP_partial": "src.metrics",
    "CocoDetection": "src.data.coco",
    "CutoutPIL": "src.data.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
