"""Compatibility module: the import path of the paper's code.

The paper's code imports its metrics, COCO dataset and augmentations from
``src.helper_functions.helper_functions``; here they live in the modules that own them (`src.metrics`,
with the paper's signatures, `src.data.coco` and `src.data.transforms`) and are re-exported unchanged.
"""

from src.data.coco import CocoDetection
from src.data.transforms import CutoutPIL
from src.metrics import AP_partial, average_precision, mAP, mAP_partial

__all__ = ["AP_partial", "CocoDetection", "CutoutPIL", "average_precision", "mAP", "mAP_partial"]
