"""Image pipelines: shapes, ranges, CutoutPIL geometry, RandAugment identical to the randaugment package."""

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from src.data.image_io import load_rgb
from src.data.transforms import (
    CutoutPIL,
    RandAugment,
    ToTensor01,
    build_train_transform,
    build_val_transform,
)


def textured_image(width=40, height=30, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    noise = rng.integers(0, 60, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def test_val_pipeline_equals_torchvision_reference():
    image = textured_image()
    reference = transforms.Compose([transforms.Resize((24, 24)), transforms.ToTensor()])(image)
    ours = build_val_transform(24)(image)
    assert ours.shape == (3, 24, 24) and ours.dtype == torch.float32 and ours.is_contiguous()
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    torch.testing.assert_close(ToTensor01()(image), transforms.ToTensor()(image), rtol=0, atol=0)


def test_train_pipeline_is_the_paper_sequence():
    """Same seeds: Resize -> CutoutPIL(0.5) -> RandAugment -> torchvision ToTensor, step by step."""
    pipeline = pickle.loads(pickle.dumps(build_train_transform(32)))  # DataLoader workers may pickle it
    assert pipeline.draft_size == (32, 32) and build_train_transform(32, draft=False).draft_size is None
    reference = transforms.Compose([transforms.Resize((32, 32)), CutoutPIL(0.5), RandAugment(),
                                    transforms.ToTensor()])
    augmented = 0
    for seed in range(20):
        random.seed(seed)
        np.random.seed(seed)
        out = pipeline(textured_image())
        random.seed(seed)
        np.random.seed(seed)
        torch.testing.assert_close(out, reference(textured_image()), rtol=0, atol=0)
        assert out.dtype == torch.float32 and out.is_contiguous()
        augmented += not torch.equal(out, build_val_transform(32)(textured_image()))
    assert augmented == 20  # the cutout alone changes every image


def test_cutout_paints_the_expected_rectangle():
    width, height = 100, 60
    for seed in range(10):
        image = Image.new("RGB", (width, height), (0, 0, 0))
        CutoutPIL(0.5, rng=random.Random(seed))(image)
        replay = random.Random(seed)  # same draws, in the documented order: x, y, colour
        x_c, y_c = replay.randrange(width), replay.randrange(height)
        colour = [replay.randint(0, 255) for _ in range(3)]
        # Half sizes round(0.5*100)//2 = 25 and round(0.5*60)//2 = 15; corners inclusive, clipped.
        x1, x2 = max(x_c - 25, 0), min(x_c + 25, width - 1)
        y1, y2 = max(y_c - 15, 0), min(y_c + 15, height - 1)
        expected = np.zeros((height, width, 3), dtype=np.uint8)
        expected[y1:y2 + 1, x1:x2 + 1] = colour
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_cutout_rejects_bad_factor():
    with pytest.raises(ValueError, match="cutout_factor"):
        CutoutPIL(1.5)


def test_randaugment_matches_the_randaugment_package(monkeypatch):
    package = pytest.importorskip("randaugment")
    monkeypatch.setattr(np, "int", int, raising=False)  # the package still uses the removed alias
    theirs, ours = package.RandAugment(), RandAugment()
    image = textured_image(48, 48)
    for seed in range(120):
        random.seed(seed)
        np.random.seed(seed)
        expected = np.asarray(theirs(image.copy()))
        random.seed(seed)
        np.random.seed(seed)
        actual = np.asarray(ours(image.copy()))
        np.testing.assert_array_equal(actual, expected, err_msg=f"seed {seed}")


def test_draft_decoding_stays_close_to_full_decoding(tmp_path):
    path = tmp_path / "big.jpg"
    textured_image(800, 600).resize((800, 600)).save(path, quality=90)
    drafted = load_rgb(str(path), draft_size=(200, 200))
    assert drafted.size == (400, 300)  # 1/2 scale: the largest that keeps both sides >= 200
    full = load_rgb(str(path))
    assert full.size == (800, 600)
    val = build_val_transform(200)
    difference = (val(drafted) - val(full)).abs()
    assert difference.mean().item() < 2 / 255 and difference.max().item() < 40 / 255
    assert load_rgb(str(path), draft_size=(500, 500)).size == (800, 600)  # 1/2 would be too small
