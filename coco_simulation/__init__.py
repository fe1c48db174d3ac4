"""Partial-label simulation for fully labelled multi-label datasets (COCO in the paper).

See :mod:`src.data.partial_labels` for the modes and the partial label file format, and
``python -m coco_simulation --help`` for the command line.
"""

from coco_simulation.simulate import (
    SIMULATION_MODES,
    PartialLabelFile,
    canonical_mode,
    class_statistics,
    format_class_statistics,
    load_partial_labels,
    read_partial_label_file,
    save_partial_labels,
    simulate_coco,
    simulate_partial_labels,
)

__all__ = [
    "SIMULATION_MODES",
    "PartialLabelFile",
    "canonical_mode",
    "class_statistics",
    "format_class_statistics",
    "load_partial_labels",
    "read_partial_label_file",
    "save_partial_labels",
    "simulate_coco",
    "simulate_partial_labels",
]
