"""Embedded synthetic dataset: COCO layout read by CocoDetection, long-tailed prior, determinism."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from src.data import embedded
from src.data.embedded import (
    COLOURS,
    EMBEDDED_CLASS_NAMES,
    SHAPES,
    UPSTREAM_CLASS_NAMES,
    describe_prior,
    embedded_class_prior,
    encode_png,
    ensure_dataset,
    generate_embedded_dataset,
    generate_upstream_dataset,
    label_model,
    sample_embedded_labels,
)

N_TRAIN, N_TEST, SEED = 150, 40, 3


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    return generate_embedded_dataset(root, n_train=N_TRAIN, n_test=N_TEST, seed=SEED)


def load_coco(root, split):
    from src.data import resolve_coco_files
    from src.data.coco import CocoDetection

    return CocoDetection(*resolve_coco_files(str(root), None, split))


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
