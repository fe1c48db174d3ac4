"""Partial-label simulation for fully labelled multi-label datasets (COCO in the paper).

The implementation and the file format live in :mod:`src.data.partial_labels`; ``coco_simulation.simulate``
is the paper code's import path (``simulate_coco``); ``python -m coco_simulation --help`` the command line.
"""
