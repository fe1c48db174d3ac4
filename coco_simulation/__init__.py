"""Partial-label simulation of fully labelled datasets: ``python -m coco_simulation``; ``simulate_coco``
(the paper code's import path); the implementation is `src.data.partial_labels`."""
