"""The paper's import path: its metrics, COCO dataset and augmentation, re-exported from their owners."""

from src.data.coco import CocoDetection
from src.data.transforms import CutoutPIL
from src.metrics import AP_partial, average_precision, mAP, mAP_partial

__all__ = ["AP_partial", "CocoDetection", "CutoutPIL", "average_precision", "mAP", "mAP_partial"]
