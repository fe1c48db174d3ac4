"""Image pipelines of the CSL paper: train ``Resize((s, s))`` -> ``CutoutPIL(0.5)`` -> ``RandAugment()`` ->
``ToTensor``; val ``Resize((s, s))`` -> ``ToTensor``; no mean/std normalisation (TResNet expects [0, 1]).

The paper's ``randaugment.RandAugment`` (PyPI ``randaugment`` 1.0.2) no longer runs on NumPy >= 1.24
(``np.int``); `RandAugment` below reproduces it draw for draw (tests/test_transforms.py compares both).
The paper's CutoutPIL swapped width and height; after the square Resize that changes nothing.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms


class CutoutPIL:
    """Paint a ``round(f * width) x round(f * height)`` rectangle (clipped; corners inclusive) centred on a
    uniformly random pixel one uniformly random colour, in place."""

    def __init__(self, cutout_factor: float = 0.5, rng: random.Random | None = None):
        if not 0.0 <= cutout_factor <= 1.0:
            raise ValueError(f"CutoutPIL: cutout_factor must be in [0, 1], got {cutout_factor}")
        self.cutout_factor = cutout_factor
        self.rng = rng  # None: the global `random` (seeded per DataLoader worker by torch); picklable

    def __call__(self, image: Image.Image) -> Image.Image:
        rng = self.rng if self.rng is not None else random
        width, height = image.size
        half_w = int(self.cutout_factor * width + 0.5) // 2
        half_h = int(self.cutout_factor * height + 0.5) // 2
        x_c = rng.randrange(width)
        y_c = rng.randrange(height)
        x1, x2 = max(x_c - half_w, 0), min(x_c + half_w, width)
        y1, y2 = max(y_c - half_h, 0), min(y_c + half_h, height)
        fill = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        ImageDraw.Draw(image).rectangle([x1, y1, x2, y2], fill=fill)
        return image

    def __repr__(self) -> str:
        return f"CutoutPIL(cutout_factor={self.cutout_factor})"


_MAGNITUDES = range(1, 10)
_APPLY_PROBABILITY = 0.5
_FILL = (128, 128, 128)
_CUTOUT_FILL = (125, 122, 113)


def _sign() -> int:
    return random.choice([-1, 1])


def _enhance(enhancer):
    return lambda img, m: enhancer(img).enhance(1 + m * _sign())


def _affine(image, coefficients, resample=Image.NEAREST):
    return image.transform(image.size, Image.AFFINE, coefficients, resample, fillcolor=_FILL)


def _rotate(image, degrees):
    rotated = image.convert("RGBA").rotate(degrees)
    background = Image.new("RGBA", rotated.size, (128,) * 4)
    return Image.composite(rotated, background, rotated).convert(image.mode)


def _cutout(image, size):
    """Square of side ~``size`` at a np.random centre (x first, then y), painted a fixed grey."""
    image = image.copy()
    width, height = image.size
    x_c = np.random.randint(low=0, high=width)
    y_c = np.random.randint(low=0, high=height)
    half = int(size) // 2
    box = (max(0, x_c - half), max(0, y_c - half), min(width, x_c + half), min(height, y_c + half))
    image.paste(_CUTOUT_FILL, box)
    return image


# Operation -> (strength per magnitude index 0..9, how to apply it), as in the randaugment package.
_OPERATIONS = {
    "Invert": (np.zeros(10), lambda img, m: ImageOps.invert(img)),
    "Cutout": (np.round(np.linspace(0, 20, 10), 0).astype(int), _cutout),
    "Sharpness": (np.linspace(0.0, 0.9, 10), _enhance(ImageEnhance.Sharpness)),
    "AutoContrast": (np.zeros(10), lambda img, m: ImageOps.autocontrast(img)),
    "Posterize": (np.round(np.linspace(8, 4, 10), 0).astype(int),
                  lambda img, m: ImageOps.posterize(img, int(m))),
    "ShearX": (np.linspace(0, 0.3, 10),
               lambda img, m: _affine(img, (1, m * _sign(), 0, 0, 1, 0), Image.BICUBIC)),
    "TranslateX": (np.linspace(0, 150 / 331, 10),
                   lambda img, m: _affine(img, (1, 0, m * img.size[0] * _sign(), 0, 1, 0))),
    "TranslateY": (np.linspace(0, 150 / 331, 10),
                   lambda img, m: _affine(img, (1, 0, 0, 0, 1, m * img.size[1] * _sign()))),
    "ShearY": (np.linspace(0, 0.3, 10),
               lambda img, m: _affine(img, (1, 0, 0, m * _sign(), 1, 0), Image.BICUBIC)),
    "Rotate": (np.linspace(0, 30, 10), _rotate),
    "Equalize": (np.zeros(10), lambda img, m: ImageOps.equalize(img)),
    "Contrast": (np.linspace(0.0, 0.9, 10), _enhance(ImageEnhance.Contrast)),
    "Color": (np.linspace(0.0, 0.9, 10), _enhance(ImageEnhance.Color)),
    "Solarize": (np.linspace(256, 0, 10), lambda img, m: ImageOps.solarize(img, m)),
    "Brightness": (np.linspace(0.0, 0.9, 10), _enhance(ImageEnhance.Brightness)),
}


class RandAugment:
    """One of the 135 x 135 ordered (operation, magnitude 1..9) pairs, each applied with probability 0.5."""

    def __init__(self):
        self._ops = [(name, levels[m]) for name, (levels, _) in _OPERATIONS.items() for m in _MAGNITUDES]

    def __call__(self, image: Image.Image) -> Image.Image:
        n = len(self._ops)
        pair = random.randint(0, n * n - 1)
        for name, magnitude in (self._ops[pair // n], self._ops[pair % n]):  # names: a picklable transform
            if random.random() < _APPLY_PROBABILITY:
                image = _OPERATIONS[name][1](image, magnitude)
        return image

    def __repr__(self) -> str:
        return "RandAugment(pairs of 15 operations x 9 magnitudes, p=0.5 each)"


class ToTensor01:
    """PIL RGB -> float32 CxHxW in [0, 1]; equal to torchvision's ToTensor with one copy fewer."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.array(image, dtype=np.uint8, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div_(255.0)

    def __repr__(self) -> str:
        return "ToTensor01()"


class ImagePipeline(transforms.Compose):
    """A Compose that tells the dataset which size JPEGs may be draft-decoded to (``draft_size``)."""

    def __init__(self, steps, draft_size: tuple[int, int] | None = None):
        super().__init__(steps)
        self.draft_size = draft_size


def _check_size(image_size: int) -> int:
    if int(image_size) != image_size or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


def build_train_transform(image_size: int, draft: bool = True) -> ImagePipeline:
    size = _check_size(image_size)
    steps = [transforms.Resize((size, size)), CutoutPIL(cutout_factor=0.5), RandAugment(), ToTensor01()]
    return ImagePipeline(steps, draft_size=(size, size) if draft else None)


def build_val_transform(image_size: int, draft: bool = True) -> ImagePipeline:
    size = _check_size(image_size)
    return ImagePipeline([transforms.Resize((size, size)), ToTensor01()],
                         draft_size=(size, size) if draft else None)
