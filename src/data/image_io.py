"""Image decoding for the datasets: fast, faithful, and with errors that name the file.

`load_rgb(path, draft_size)` returns an RGB PIL image:

* JPEG draft mode: when ``draft_size`` (the size the pipeline will resize to) is given, libjpeg is
  asked to decode at a DCT scale of 1/2, 1/4 or 1/8, but only at the largest scale whose result is
  still at least ``draft_size`` in both dimensions.  The following Resize therefore still
  down-samples (never up-samples), and its antialiasing filter still sees more pixels than it outputs;
  the output differs from a full-resolution decode by a few grey levels (measured in
  bench/bench_data.py).  A 640x480 COCO image going to 448x448 cannot be drafted at all (1/2 would be
  320x240), so at the paper's settings the output is bit-identical; drafting pays off for large
  originals (OpenImages full-size, 1024+ px) or small training sizes (224 px).
* no extra copy: ``Image.convert('RGB')`` copies an image that is already RGB, so it is only called
  for other modes (greyscale, CMYK, palette).

`scan_images(paths)` opens every file's header in a thread pool (cheap: no pixel decoding) to find
missing or unreadable files before training starts; truncated pixel data is only found at first read
(where ``skip_bad_images`` datasets replace the sample, see `MultiLabelImageDataset._load_image`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.data.labels import DatasetError

_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageReadError(DatasetError):
    """An image file is missing or cannot be decoded; ``reason`` is the message without the advice."""

    def __init__(self, reason: str, advice: str = ""):  # one-argument form: DataLoader workers re-raise so
        super().__init__(f"{reason}. {advice}" if advice else reason)
        self.reason = reason


def load_rgb(path: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` into an RGB image, JPEG-drafted towards ``draft_size`` (width, height) if given."""
    try:
        image = Image.open(path)
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", tuple(int(s) for s in draft_size))
        image.load()
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}", "Check --data (the image root), or pass "
                             "--skip_bad_images to drop missing images") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot decode image {path}: {exc}", "Replace or delete the file, or pass "
                             "--skip_bad_images to drop unreadable images") from exc
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _header_ok(path: str) -> bool:
    try:
        with Image.open(path) as image:
            return image.size[0] > 0 and image.size[1] > 0
    except (FileNotFoundError, *_DECODE_ERRORS):
        return False


def scan_images(paths: Sequence[str], num_threads: int = 8) -> np.ndarray:
    """Boolean mask: True where the file exists and its image header can be parsed."""
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        ok = list(pool.map(_header_ok, paths, chunksize=256))
    return np.asarray(ok, dtype=bool)


class PathSequence(Sequence):
    """Image paths kept as one fixed-width bytes array (~16-60 bytes per image instead of a Python
    str object each, which matters for OpenImages' 9M images); item ``i`` is ``root/prefix+name+suffix``."""

    def __init__(self, root: str, names: np.ndarray, prefix: str = "", suffix: str = ""):
        self.root = root
        self.names = names
        self.prefix = prefix
        self.suffix = suffix

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return os.path.join(self.root, self.prefix + self.names[i].decode() + self.suffix)

    def take(self, rows: np.ndarray) -> PathSequence:
        return PathSequence(self.root, self.names[rows], self.prefix, self.suffix)
