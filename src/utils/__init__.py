"""Utilities of the training scripts: process groups (`distributed`), checkpoint I/O and RNG state
(`checkpoint`), run outputs (`logging`: args.json, metrics.jsonl, TensorBoard)."""
