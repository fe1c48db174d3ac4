"""Image decoding for the datasets: fast, faithful, and with errors that name the file. JPEGs are decoded in
libjpeg draft mode at the largest DCT scale still at least ``draft_size`` (the Resize still down-samples);
16/32-bit greyscale is scaled to 8 bits, not clipped as Pillow's ``convert('RGB')`` does; `scan_images`
checks every file once before training.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from src.data.labels import DatasetError

_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)

HEADER_CHECK_LIMIT = 2_000_000  # above this many images the start-up scan checks existence only
_SCAN_CHUNK = 1024  # paths per thread-pool task (one future per path would cost more than the check)
# Per-image cost above which the start-up check waits on the disk (cold cache, network file system) and
# threads help; 3x the warm-cache cost measured on the development machine (header ~20 us, stat ~3 us).
IO_BOUND_US = {True: 60.0, False: 10.0}
IO_BOUND_THREADS = 16
_WORKER_TRACEBACK = "Original Traceback (most recent call last)"


class ImageReadError(DatasetError):
    """An image file is missing or cannot be decoded; ``reason`` is the message without the advice."""

    def __init__(self, reason: str, advice: str = ""):
        # One-argument form: a DataLoader worker's error is re-raised in the main process as
        # ImageReadError("Caught ImageReadError in DataLoader worker process N.\nOriginal Traceback ...");
        # keep only the original message (its last line) so the user sees one line, not 40.
        if not advice and _WORKER_TRACEBACK in reason:
            last = reason.rstrip().splitlines()[-1]
            reason = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(f"{reason}. {advice}" if advice else reason)
        self.reason = reason


def load_rgb(path: str, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """RGB image, JPEG-drafted towards ``draft_size`` (width, height) if given."""
    image = None
    try:
        image = Image.open(path)
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", tuple(int(s) for s in draft_size))
        image.load()
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}", "Check --data (the image root), or pass "
                             "--skip_bad_images to drop missing images") from None
    except _DECODE_ERRORS as exc:
        if image is not None:
            image.close()  # the traceback keeps the half-read image, and so its open file, alive
        raise ImageReadError(f"cannot decode image {path}: {exc}", "Replace or delete the file, or pass "
                             "--skip_bad_images to drop unreadable images") from exc
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        image = to_uint8_grey(image)
    return image if image.mode == "RGB" else image.convert("RGB")


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_uint8_grey(image: Image.Image) -> Image.Image:
    """``I;16*`` by ``value >> 8``; ``I`` / ``F`` by the narrowest of [0, 1] (floats), [0, 255], [0, 65535]
    that holds the values, else stretched from [min, max]."""
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        return Image.fromarray((values.astype(np.uint16) >> 8).astype(np.uint8), mode="L")
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 1 and image.mode == "F":
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = np.floor(values / 256.0)
    else:
        scaled = (values - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def image_problem(path: str, header: bool = True, full: bool = False) -> str | None:
    """None when ``path`` is a regular file (and, with ``header``, its image header parses; with ``full``,
    its pixels decode); else the reason. A FIFO or device file is never opened: reading it could block."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if not header:
            return None if info.st_size > 0 else "empty file"
        with Image.open(path) as image:
            if full:
                image.load()
            return None if image.size[0] > 0 and image.size[1] > 0 else f"image size {image.size}"
    except FileNotFoundError:
        return "not found"
    except _DECODE_ERRORS as exc:  # PIL's messages repeat the path, which the caller prints already
        message = str(exc).replace(repr(path), "").replace(path, "").strip(" :'")
        return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def rgb_bytes_within(paths: Sequence[str], max_bytes: int) -> int | None:
    """Bytes of all ``paths`` as 8-bit RGB, from the headers; None as soon as the sum passes ``max_bytes``
    or a header cannot be read (so a large dataset costs a few reads)."""
    total = 0
    for path in paths:
        try:
            with Image.open(path) as image:
                total += 3 * image.size[0] * image.size[1]
        except (FileNotFoundError, *_DECODE_ERRORS):
            return None
        if total > max_bytes:
            return None
    return total


def _check_chunk(paths: Sequence[str], header: bool, full: bool = False) -> np.ndarray:
    return np.fromiter((image_problem(p, header, full) is None for p in paths), dtype=bool, count=len(paths))


def scan_images(paths: Sequence[str], num_threads: int | None = None, header: bool | None = None,
                full: bool = False, progress: bool = False) -> np.ndarray:
    """True where the file exists and (with ``header``) its image header parses (with ``full``: its pixels
    decode). Parsing holds the GIL, so threads only pay off when the check waits on the disk (or decodes):
    the first chunk is timed here, and the rest uses ``IO_BOUND_THREADS`` threads only if it took over
    ``IO_BOUND_US`` per image."""
    if header is None:
        header = len(paths) <= HEADER_CHECK_LIMIT
    chunks = [paths[start:start + _SCAN_CHUNK] for start in range(0, len(paths), _SCAN_CHUNK)]
    if not chunks:
        return np.zeros(0, dtype=bool)
    start = time.perf_counter()
    bar = tqdm(total=len(paths), disable=not progress, leave=False, desc="decoding images", unit="img")
    results = [_check_chunk(chunks[0], header, full)]
    bar.update(len(chunks[0]))
    per_image_us = 1e6 * (time.perf_counter() - start) / len(chunks[0])
    if num_threads is None:
        num_threads = IO_BOUND_THREADS if full or per_image_us > IO_BOUND_US[header] else 1
    rest = chunks[1:]

    def check(chunk):
        ok = _check_chunk(chunk, header, full)
        bar.update(len(chunk))
        return ok

    with bar:
        if num_threads <= 1 or len(rest) <= 1:
            results += [check(chunk) for chunk in rest]
        else:
            with ThreadPoolExecutor(max_workers=min(num_threads, len(rest))) as pool:
                results += list(pool.map(check, rest))
    return np.concatenate(results)


class PathSequence(Sequence):
    """Paths as one fixed-width bytes array (~16-60 bytes per image, not a str object each: OpenImages has
    9M); item ``i`` is ``root/prefix+name+suffix``."""

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
