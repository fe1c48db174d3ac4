"""Embedded synthetic dataset: COCO layout read by CocoDetection, long-tailed prior, determinism, the
two class designs, and the decoded-image cache of the datasets."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from src.data import embedded, resolve_coco_files
from src.data.coco import CocoDetection
from src.data.embedded import (
    COLOUR_RGB,
    COLOURS,
    EMBEDDED_CLASS_NAMES,
    GLYPH_CLASS_NAMES,
    SHAPES,
    UPSTREAM_CLASS_NAMES,
    UPSTREAM_GLYPH_CLASS_NAMES,
    class_attributes,
    describe_prior,
    embedded_class_prior,
    encode_png,
    ensure_dataset,
    generate_embedded_dataset,
    generate_upstream_dataset,
    label_model,
    sample_embedded_labels,
)
from src.data.image_io import ImageReadError
from src.data.transforms import build_train_transform, build_val_transform

N_TRAIN, N_TEST, SEED = 150, 40, 3


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    return generate_embedded_dataset(root, n_train=N_TRAIN, n_test=N_TEST, seed=SEED)


def load_coco(root, split, transform=None):
    return CocoDetection(*resolve_coco_files(str(root), None, split), transform=transform)


@pytest.mark.parametrize("split,count", [("train", N_TRAIN), ("val", N_TEST)])
def test_generated_dataset_loads_through_coco_detection_with_intended_labels(generated, split, count):
    dataset = load_coco(generated.out_dir, split)
    assert dataset.class_names == EMBEDDED_CLASS_NAMES and len(dataset) == count
    intended = generated.splits[split].labels
    rows = [generated.splits[split].image_ids.index(i) for i in dataset.ids]
    np.testing.assert_array_equal(dataset.labels.to_dense(), intended[rows].astype(np.int8))
    image, target = dataset[0]
    assert image.size == (32, 32) and image.mode == "RGB"
    np.testing.assert_array_equal(target.numpy(), intended[rows[0]].astype(np.float32))


def test_train_labels_equal_the_labels_only_fast_path(generated):
    np.testing.assert_array_equal(generated.splits["train"].labels, sample_embedded_labels(N_TRAIN, SEED))


def test_annotations_are_valid_coco_instances(generated):
    with open(generated.splits["train"].annotation_file) as handle:
        coco = json.load(handle)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 49))
    assert [c["name"] for c in coco["categories"]] == [f"{c}_{s}" for s in SHAPES for c in COLOURS]
    annotations = coco["annotations"]
    assert len({a["id"] for a in annotations}) == len(annotations)
    per_image = np.bincount([a["image_id"] for a in annotations])[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6  # 1-6 objects per image
    for a in annotations:
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 32 and y + h <= 32
        assert 0 < a["area"] <= w * h  # visible pixels lie inside the object's box


def test_every_labelled_class_stays_visible():
    labels = sample_embedded_labels(300, seed=5)
    objects, masks, owner, _, _ = embedded._draw_chunk(labels, 32, np.random.default_rng(0))
    for i in range(labels.shape[0]):
        # Independent recount of the occlusion rule: a pixel shows the last drawn object covering it.
        expected_owner = np.zeros((32, 32), dtype=int)
        for j in range(6):
            expected_owner[masks[i, j]] = j + 1
        np.testing.assert_array_equal(owner[i], expected_owner)
        assert sorted(set(objects.classes[i][objects.classes[i] >= 0])) == list(np.flatnonzero(labels[i]))
        for c in np.flatnonzero(labels[i]):
            instances = np.flatnonzero(objects.classes[i] == c)
            shown = [(expected_owner == j + 1).sum() / masks[i, j].sum() for j in instances]
            assert max(shown) >= embedded.MIN_VISIBLE_FRACTION


def test_png_encoder_round_trips_through_pil():
    image = np.random.default_rng(1).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))).convert("RGB"))
    np.testing.assert_array_equal(decoded, image)


def test_label_files_are_byte_identical_on_rerun_and_differ_across_seeds(tmp_path):
    paths = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_embedded_dataset(tmp_path / name, n_train=40, n_test=10, seed=seed)
        paths[name] = tmp_path / name / "annotations" / "instances_train2014.json"
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    assert paths["a"].read_bytes() != paths["c"].read_bytes()
    png = "train2014/embedded_train2014_000007.png"
    assert (tmp_path / "a" / png).read_bytes() == (tmp_path / "b" / png).read_bytes()


def test_true_prior_is_long_tailed_as_specified():
    stats = describe_prior(embedded_class_prior())
    assert 0.45 <= stats["top_class_frequency"] <= 0.55
    assert 8 <= stats["classes_above_5pct"] <= 12
    assert 17 <= stats["classes_below_2pct"] <= 24
    assert 2.0 <= stats["labels_per_image"] <= 3.0


def test_sampled_labels_match_the_exact_prior_within_binomial_bounds():
    n = 20000
    labels = sample_embedded_labels(n, seed=9)
    counts = labels.sum(axis=1)
    assert counts.min() >= 1 and counts.max() <= embedded.MAX_OBJECTS
    prior = embedded_class_prior()
    sigma = np.sqrt(n * prior * (1 - prior))
    assert np.all(np.abs(labels.sum(axis=0) - n * prior) < 5 * sigma)
    measured = describe_prior(labels.mean(axis=0))
    assert 8 <= measured["classes_above_5pct"] <= 12 and 2.0 <= measured["labels_per_image"] <= 3.0


def test_contexts_create_co_occurrence_and_leave_the_top_class_alone():
    model = label_model()
    top = int(np.argmax(model.base_prior))
    assert np.allclose(model.context_probs[:, top], model.base_prior[top])
    np.testing.assert_allclose(model.context_probs.mean(axis=0), model.base_prior, rtol=1e-9)
    labels = sample_embedded_labels(20000, seed=2).astype(np.float64)
    freq = labels.mean(axis=0)
    joint = labels.T @ labels / labels.shape[0]
    frequent = freq > 0.04
    lift = (joint / np.outer(freq, freq))[np.ix_(frequent, frequent)]
    off_diagonal = lift[~np.eye(lift.shape[0], dtype=bool)]
    assert off_diagonal.max() > 1.5 and off_diagonal.min() < 0.7  # some pairs attract, some repel


def test_upstream_dataset_has_factorised_labels_and_another_frequency_order(tmp_path):
    result = generate_upstream_dataset(tmp_path, n_train=60, n_test=10, seed=4)
    dataset = load_coco(tmp_path, "train")
    assert dataset.class_names == UPSTREAM_CLASS_NAMES
    combos = sample_embedded_labels(60, seed=4, variant="upstream").reshape(60, len(SHAPES), len(COLOURS))
    expected = np.concatenate([combos.any(axis=2), combos.any(axis=1)], axis=1).astype(np.int8)
    rows = [result.splits["train"].image_ids.index(i) for i in dataset.ids]
    np.testing.assert_array_equal(dataset.labels.to_dense(), expected[rows])
    order_down = np.argsort(-embedded_class_prior("embedded"))[:10]
    order_up = np.argsort(-embedded_class_prior("upstream"))[:10]
    assert not np.array_equal(order_down, order_up)


def test_ensure_dataset_skips_matching_rebuilds_changed_and_protects_foreign_folders(tmp_path):
    target = tmp_path / "emb"
    assert ensure_dataset(target, n_train=20, n_test=5) is not None
    stamp = (target / "annotations" / "instances_val2014.json").stat().st_mtime_ns
    assert ensure_dataset(target, n_train=20, n_test=5) is None  # same config: reused
    assert (target / "annotations" / "instances_val2014.json").stat().st_mtime_ns == stamp
    rebuilt = ensure_dataset(target, n_train=20, n_test=5, seed=1)  # other seed: rebuilt
    assert rebuilt is not None and json.loads((target / "embedded_config.json").read_text())["seed"] == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="non-empty folder.*--force"):
        ensure_dataset(foreign, n_train=20, n_test=5)
    assert ensure_dataset(foreign, n_train=20, n_test=5, force=True) is not None


def test_cli_writes_and_then_skips(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "e"), "--n_train", "20", "--n_test", "5", "--seed", "2"]
    embedded.main(argv)
    assert "written to" in capsys.readouterr().out
    embedded.main(argv)
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs,message",
    [({"n_train": 0}, "n_train=0"), ({"image_size": 8}, "image_size=8"), ({"seed": -1}, "seed=-1")],
)
def test_bad_generator_arguments_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_embedded_dataset(tmp_path, **{"n_train": 10, "n_test": 5, **kwargs})
    with pytest.raises(ValueError, match="variant='imagenet'"):
        sample_embedded_labels(5, variant="imagenet")


# ----------------------------------------------------------------------------------------------
# Class designs
# ----------------------------------------------------------------------------------------------

# sha256 of the annotation files and decoded pixels (dataset_digest) written by the generator as
# committed in 41f8c15, before designs existed: the default design must keep producing exactly these.
DIGEST_BEFORE_DESIGNS = {
    "embedded": "5a6a37d301720ab5a75687e029cdca8afadd666da2a84ca057f91b540ad3b5fb",
    "upstream": "49afb1ffa1f23eb50194ff4c63dad77050f13de6bd3be9649fe25b72684ee9e8",
}


def dataset_digest(root) -> str:
    """Annotation bytes and decoded pixels (not PNG bytes, which depend on the zlib build) of both splits."""
    digest = hashlib.sha256()
    for folder in ("train2014", "val2014"):
        digest.update((root / "annotations" / f"instances_{folder}.json").read_bytes())
        for name in sorted(os.listdir(root / folder)):
            with Image.open(root / folder / name) as image:
                digest.update(name.encode() + np.asarray(image.convert("RGB")).tobytes())
    return digest.hexdigest()


def test_default_design_writes_exactly_what_the_generator_wrote_before_designs(tmp_path):
    generate_embedded_dataset(tmp_path / "e", n_train=40, n_test=10, seed=3)
    generate_embedded_dataset(tmp_path / "x", n_train=40, n_test=10, seed=3, design="shape_colour")
    generate_upstream_dataset(tmp_path / "u", n_train=30, n_test=10, seed=4, image_size=24)
    assert dataset_digest(tmp_path / "e") == DIGEST_BEFORE_DESIGNS["embedded"]
    assert dataset_digest(tmp_path / "x") == DIGEST_BEFORE_DESIGNS["embedded"]
    assert dataset_digest(tmp_path / "u") == DIGEST_BEFORE_DESIGNS["upstream"]
    assert json.loads((tmp_path / "e" / "embedded_config.json").read_text())["design"] == "shape_colour"


# The same digests of the glyphs design, as written by the generator of bcae2cd (before its code was folded):
# a later change to the generator must keep every file of both designs.
DIGEST_GLYPHS = {
    "embedded": "32dbe0e9250f3280af92b4067fea8f48dccb40e08418d95c216efb7f2103dc09",
    "upstream": "7b137320973ce331fb1946f83fb122c217fd3eaf36c552c16a63084266eed750",
}


def test_glyphs_design_writes_exactly_what_the_generator_wrote_before(tmp_path):
    generate_embedded_dataset(tmp_path / "g", n_train=40, n_test=10, seed=3, design="glyphs")
    generate_upstream_dataset(tmp_path / "u", n_train=30, n_test=10, seed=4, image_size=24, design="glyphs")
    assert dataset_digest(tmp_path / "g") == DIGEST_GLYPHS["embedded"]
    assert dataset_digest(tmp_path / "u") == DIGEST_GLYPHS["upstream"]


def test_class_attributes_follow_the_class_names_of_each_design():
    assert class_attributes() == [(s, c) for s in SHAPES for c in COLOURS]
    assert [f"{c}_{s}" for s, c in class_attributes("shape_colour")] == EMBEDDED_CLASS_NAMES
    glyphs = class_attributes("glyphs", with_core=True)
    assert [(s, c) for s, c, _ in glyphs] == class_attributes("glyphs") == class_attributes("shape_colour")
    assert [f"{c}_{s}_{k}_core" for s, c, k in glyphs] == GLYPH_CLASS_NAMES
    assert all(k == c for _, c, k in class_attributes("shape_colour", with_core=True))  # solid glyphs
    with pytest.raises(ValueError, match="design='letters'"):
        class_attributes("letters")


def test_any_two_glyph_classes_share_at_most_one_attribute():
    glyphs = class_attributes("glyphs", with_core=True)
    assert len(set(glyphs)) == 48 and all(core != body for _, body, core in glyphs)
    for a, b in itertools.combinations(glyphs, 2):
        assert sum(x == y for x, y in zip(a, b, strict=True)) <= 1, (a, b)
    # Balanced: every shape 8 times, every body colour and every core colour 6 times.
    for position, count in ((0, 8), (1, 6), (2, 6)):
        assert set(np.unique([g[position] for g in glyphs], return_counts=True)[1]) == {count}
    # In the shape_colour design a class has 5 + 7 siblings that differ from it in one attribute.
    flat = class_attributes("shape_colour")
    assert sum(sum(x == y for x, y in zip(flat[0], b, strict=True)) == 1 for b in flat) == 12


@pytest.fixture(scope="module")
def generated_glyphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyphs")
    return generate_embedded_dataset(root, n_train=N_TRAIN, n_test=N_TEST, seed=SEED, design="glyphs")


def test_glyph_dataset_has_the_same_labels_and_objects_and_differs_only_inside_objects(
    generated, generated_glyphs
):
    dataset = load_coco(generated_glyphs.out_dir, "train")
    assert dataset.class_names == GLYPH_CLASS_NAMES and generated_glyphs.class_names == GLYPH_CLASS_NAMES
    np.testing.assert_array_equal(generated_glyphs.splits["train"].labels, generated.splits["train"].labels)
    flat_root, glyph_root = generated.out_dir, generated_glyphs.out_dir
    for folder in ("train2014", "val2014"):
        flat, glyph = (
            json.loads((Path(root) / "annotations" / f"instances_{folder}.json").read_text())
            for root in (flat_root, glyph_root)
        )
        assert glyph["images"] == flat["images"] and glyph["annotations"] == flat["annotations"]
        assert glyph["info"]["design"] == "glyphs" and "design" not in flat["info"]
        changed_images = 0
        for image in flat["images"]:
            a, b = (
                np.asarray(Image.open(os.path.join(root, folder, image["file_name"])))
                for root in (flat_root, glyph_root)
            )
            inside = np.zeros(a.shape[:2], dtype=bool)
            for annotation in flat["annotations"]:
                if annotation["image_id"] == image["id"]:
                    x, y, w, h = annotation["bbox"]
                    inside[y : y + h, x : x + w] = True
            np.testing.assert_array_equal(a[~inside], b[~inside])  # background and noise untouched
            changed_images += bool((a != b).any())
        assert changed_images >= 0.9 * len(flat["images"])  # cores show (some are hidden by occlusion)


def nearest_palette_colour(rgb: np.ndarray) -> str:
    """Palette colour of the closest hue: objects vary in brightness (x 0.85-1.1), so compare directions."""
    palette = COLOUR_RGB / np.linalg.norm(COLOUR_RGB, axis=1, keepdims=True)
    return COLOURS[int(np.argmax(palette @ (rgb / np.linalg.norm(rgb))))]


def test_glyph_pixels_show_the_body_and_core_colours_of_their_class():
    labels = sample_embedded_labels(200, seed=8)
    objects, masks, owner, images, _ = embedded._draw_chunk(
        labels, 32, np.random.default_rng(0), np.random.default_rng(1)
    )
    cores = embedded._object_masks(objects, 32, embedded._core_mask)
    attributes = class_attributes("glyphs", with_core=True)
    checked = 0
    for i, slot in zip(*np.nonzero(objects.classes >= 0), strict=True):
        shown = owner[i] == slot + 1
        core, body = shown & cores[i, slot], shown & ~cores[i, slot]
        if core.sum() < 4 or body.sum() < 4:
            continue
        _, body_colour, core_colour = attributes[objects.classes[i, slot]]
        assert nearest_palette_colour(np.median(images[i][core], axis=0)) == core_colour
        assert nearest_palette_colour(np.median(images[i][body], axis=0)) == body_colour
        checked += 1
    assert checked > 300
    area, core_area = masks.sum(axis=(-2, -1)), (cores & masks).sum(axis=(-2, -1))
    assert np.all(core_area <= area) and np.all((core_area > 0) == (area > 0))  # every glyph has a core
    used = (area > 0) & (objects.classes // len(COLOURS) != SHAPES.index("ring"))
    share = core_area[used] / area[used]
    assert 0.2 < share.mean() < 0.5  # about CORE_SCALE**2 of a shape


def test_upstream_glyphs_add_factorised_core_classes(tmp_path):
    result = generate_upstream_dataset(tmp_path, n_train=60, n_test=10, seed=4, design="glyphs")
    dataset = load_coco(tmp_path, "train")
    assert dataset.class_names == UPSTREAM_GLYPH_CLASS_NAMES == result.class_names
    assert UPSTREAM_GLYPH_CLASS_NAMES[len(UPSTREAM_CLASS_NAMES) :] == [f"core_{c}" for c in COLOURS]
    combos = sample_embedded_labels(60, seed=4, variant="upstream")
    expected = np.zeros((60, len(UPSTREAM_GLYPH_CLASS_NAMES)), dtype=np.int8)
    for i, c in zip(*np.nonzero(combos), strict=True):
        shape, colour, core = class_attributes("glyphs", with_core=True)[c]
        for name in (f"shape_{shape}", f"colour_{colour}", f"core_{core}"):
            expected[i, UPSTREAM_GLYPH_CLASS_NAMES.index(name)] = 1
    rows = [result.splits["train"].image_ids.index(i) for i in dataset.ids]
    np.testing.assert_array_equal(dataset.labels.to_dense(), expected[rows])
    with open(result.splits["train"].annotation_file) as handle:
        annotations = json.load(handle)["annotations"]
    assert len(annotations) == 3 * result.splits["train"].stats["objects"]
    glyph_of = {(s, c): k for s, c, k in class_attributes("glyphs", with_core=True)}
    for first in range(0, len(annotations), 3):  # each object: its shape, colour and core, one box
        triple = annotations[first : first + 3]
        assert len({(a["image_id"], tuple(a["bbox"]), a["area"]) for a in triple}) == 1
        shape, colour, core = (UPSTREAM_GLYPH_CLASS_NAMES[a["category_id"] - 1] for a in triple)
        assert shape.startswith("shape_") and colour.startswith("colour_") and core.startswith("core_")
        assert glyph_of[shape[len("shape_") :], colour[len("colour_") :]] == core[len("core_") :]


def test_ensure_dataset_rebuilds_on_another_design_and_reuses_folders_from_before_designs(tmp_path):
    target = tmp_path / "emb"
    config_file = target / "embedded_config.json"
    assert ensure_dataset(target, n_train=20, n_test=5) is not None
    assert ensure_dataset(target, n_train=20, n_test=5, design="glyphs") is not None
    assert json.loads(config_file.read_text())["design"] == "glyphs"
    assert ensure_dataset(target, n_train=20, n_test=5, design="glyphs") is None
    assert ensure_dataset(target, n_train=20, n_test=5) is not None  # back to shape_colour: rebuilt
    # A folder written before designs existed has no "design" key; it holds the shape_colour design.
    config = json.loads(config_file.read_text())
    del config["design"]
    config_file.write_text(json.dumps(config))
    assert ensure_dataset(target, n_train=20, n_test=5) is None
    assert ensure_dataset(target, n_train=20, n_test=5, design="glyphs") is not None
    with pytest.raises(ValueError, match="design='letters'"):
        ensure_dataset(target, n_train=20, n_test=5, design="letters")


def test_cli_design_flag_writes_glyphs_and_then_skips(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "g"), "--n_train", "20", "--n_test", "5", "--design", "glyphs"]
    embedded.main(argv)
    assert "(glyphs) written to" in capsys.readouterr().out
    assert load_coco(tmp_path / "g", "val").class_names == GLYPH_CLASS_NAMES
    embedded.main(argv)
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        embedded.main([*argv, "--design", "letters"])


# ----------------------------------------------------------------------------------------------
# Decoded-image cache (src.data.base)
# ----------------------------------------------------------------------------------------------


def epoch_tensors(dataset, seed: int) -> list[torch.Tensor]:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    items = (dataset[index] for index in range(len(dataset)))  # a dataset's index wraps: no plain iteration
    return [torch.cat([image.flatten(), target]) for image, target in items]


def test_cached_dataset_yields_identical_augmented_tensors(generated):
    plain = load_coco(generated.out_dir, "train", build_train_transform(32))
    cached = load_coco(generated.out_dir, "train", build_train_transform(32))
    assert cached.cache_decoded_images() is True
    for seed in (0, 1):
        expected, got = epoch_tensors(plain, seed), epoch_tensors(cached, seed)
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(epoch_tensors(plain, 0), epoch_tensors(plain, 1)))


def test_cache_serves_a_fresh_copy_and_follows_subsets(generated):
    plain = load_coco(generated.out_dir, "train")
    cached = load_coco(generated.out_dir, "train")
    assert cached.cache_decoded_images()
    first, _ = cached[0]
    ImageDraw.Draw(first).rectangle([0, 0, 31, 31], fill=(1, 2, 3))  # as CutoutPIL draws in place
    np.testing.assert_array_equal(np.asarray(cached[0][0]), np.asarray(plain[0][0]))
    rows = [7, 2, 7]
    for sub_plain, sub_cached in ((plain.subset(rows), cached.subset(rows)), (plain, cached)):
        for index in range(len(sub_plain)):
            np.testing.assert_array_equal(np.asarray(sub_cached[index][0]), np.asarray(sub_plain[index][0]))
            assert torch.equal(sub_cached[index][1], sub_plain[index][1])


def test_cache_is_used_for_its_draft_size_only_and_refused_over_budget_or_for_bad_files(tmp_path):
    generate_embedded_dataset(tmp_path / "d", n_train=12, n_test=4, seed=1)
    cached = load_coco(tmp_path / "d", "train", build_val_transform(32))
    assert not cached.cache_decoded_images(max_bytes=12 * 32 * 32 * 3 - 1)  # one byte short
    assert cached.cache_decoded_images(max_bytes=12 * 32 * 32 * 3)
    os.remove(cached.image_paths[3])  # from now on only the cache holds this image
    assert cached[3][0].shape == (3, 32, 32)
    cached.transform = build_val_transform(16)  # another draft size: read from the files again
    with pytest.raises(ImageReadError, match="not found"):
        cached[3]
    shutil.copy(cached.image_paths[4], cached.image_paths[3])
    broken = load_coco(tmp_path / "d", "train")
    with open(broken.image_paths[5], "r+b") as handle:
        handle.truncate(60)  # the header still parses (start-up scan passes), the pixels do not
    assert broken.cache_decoded_images() is False
    with pytest.raises(ImageReadError):
        broken[5]
