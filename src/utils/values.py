"""'none' paths and numbers with bounds, for src.args' types and the loss classes' keyword checks.
A bound reads as its message: ``">= 0"``, ``"in [0, 1)"``, ``"an integer >= 1"`` (the interval or comparison
ends the text; "integer" asks for an integral value)."""

from __future__ import annotations

import argparse
import math
import re

NONE_WORDS = ("none", "")  # the paper's scripts pass --prior_path None for no prior; ours --model-path none
# Image sides a command accepts (flags and checkpoints): 4096 is 9x the paper's 448 and far above any trained
# size; a 30000 px square input would need ~10 GB per image before the model runs.
IMAGE_SIZE_BOUND = "an integer in [1, 4096]"


def is_none_path(path) -> bool:
    return path is None or str(path).strip().lower() in NONE_WORDS


def optional_path(text: str) -> str | None:
    """argparse type: a path, or None for 'none' / ''."""
    return None if is_none_path(text) else text


def printable(text) -> str:
    """``text`` with control characters escaped: names read from files never drive the terminal."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def within(value: float, bound: str) -> bool:
    if not math.isfinite(value) or ("integer" in bound and value != int(value)):
        return False
    if match := re.search(r"(>=|>)\s*(\S+)$", bound):
        low = float(match[2])
        return value >= low if match[1] == ">=" else value > low
    left, low, high, right = re.search(r"([\[(])\s*([^,]+),\s*([^\])]+)([\])])$", bound).groups()
    above = value >= float(low) if left == "[" else value > float(low)
    below = value <= float(high) if right == "]" else value < float(high)
    return above and below


def check_bounds(bounds: dict[str, str], **values) -> None:
    """ValueError naming the first keyword whose value is outside its bound."""
    for name, value in values.items():
        if name in bounds and not within(float(value), bounds[name]):
            raise ValueError(f"{name} must be {bounds[name]}, got {value!r}")


def bounded(kind: type, bound: str):
    """An argparse type: ``kind(text)`` within ``bound``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; must be {bound}") from None
        if not within(value, bound):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse
