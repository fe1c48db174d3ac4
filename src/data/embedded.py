"""A small synthetic multi-label dataset in the COCO layout, generated in seconds from a seed: 1-6 coloured
shapes with occlusion per image, 48 classes (6 shapes x 8 colours, or glyphs with a core colour), a
long-tailed COCO-like prior with scene contexts. The same config gives byte-identical files. The label
model, the designs and the files written: docs/datasets.md.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from src.data.csv_dataset import CLASSES_FILE, CSV_LAYOUTS, write_csv_labels
from src.data.partial_labels import keep_random_k, simulate_partial_labels
from src.utils.cli import HelpFormatter, run_cli

SHAPES = ("circle", "square", "triangle", "plus", "ring", "diamond")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
COLOUR_RGB = np.array(
    [
        (215, 45, 45),
        (240, 140, 30),
        (230, 220, 50),
        (50, 170, 60),
        (50, 200, 210),
        (45, 80, 215),
        (140, 60, 200),
        (240, 240, 240),
    ],
    dtype=np.float32,
)
DESIGNS = ("shape_colour", "glyphs")
# The first design and the generator's default (the demo runs glyphs): its files carry no "design" key and
# reproduce.py keeps the bare folder names for it, so both stay as they were before designs existed.
ORIGINAL_DESIGN = "shape_colour"
CORE_SCALE = 0.6  # a glyph's core is its shape shrunk about the centre by this factor (ring: the inner band)
RING_INNER, RING_CORE_OUTER = 0.52, 0.76  # ring band radii; the ring's core is the band's inner part


def glyph_core_colour(shape: int, colour: int) -> int:
    """Core colour of the glyph (shape, body colour): a Latin square, so any two glyphs share at most one
    of (shape, body colour, core colour); shape + 1 is never 0 mod 8, so the core never equals the body."""
    return (shape + colour + 1) % len(COLOURS)


EMBEDDED_CLASS_NAMES = [f"{colour}_{shape}" for shape in SHAPES for colour in COLOURS]
GLYPH_CLASS_NAMES = [
    f"{COLOURS[c]}_{shape}_{COLOURS[glyph_core_colour(s, c)]}_core"
    for s, shape in enumerate(SHAPES)
    for c in range(len(COLOURS))
]
UPSTREAM_CLASS_NAMES = [f"shape_{shape}" for shape in SHAPES] + [f"colour_{colour}" for colour in COLOURS]
UPSTREAM_GLYPH_CLASS_NAMES = UPSTREAM_CLASS_NAMES + [f"core_{colour}" for colour in COLOURS]
NUM_CLASSES = len(EMBEDDED_CLASS_NAMES)

MAX_OBJECTS = 6
NUM_CONTEXTS = 4
PRIOR_TOP, PRIOR_EXPONENT, PRIOR_FLOOR = 0.5, 0.98, 0.012
CONTEXT_BOOST, CONTEXT_DAMP, CLASSES_PER_CONTEXT_EFFECT = 6.0, 0.2, 8
EXTRA_OBJECT_TRIALS, EXTRA_OBJECT_PROB = 2, 0.3
MIN_VISIBLE_FRACTION = 0.4
RADIUS_RANGE = (0.14, 0.30)  # object radius as a fraction of the image size
GENERATOR_VERSION = 1

# Fixed seeds of the label model itself (class ranks and contexts), independent of the data seed.
_VARIANTS = {"embedded": (0, 20211020), "upstream": (1, 4242)}
_SPLITS = {"train": (0, "train2014"), "val": (1, "val2014")}


# Label model ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelModel:
    """Per-context Bernoulli probabilities (NUM_CONTEXTS x 48) and the base Zipf prior (48,)."""

    base_prior: np.ndarray
    context_probs: np.ndarray


def _check_variant(variant: str) -> None:
    if variant not in _VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; use one of {sorted(_VARIANTS)}")


def _check_design(design: str) -> None:
    if design not in DESIGNS:
        raise ValueError(f"design={design!r} is unknown; use one of {list(DESIGNS)}")


def class_names(variant: str = "embedded", design: str = ORIGINAL_DESIGN) -> list[str]:
    _check_variant(variant)
    _check_design(design)
    glyphs = design == "glyphs"
    if variant == "embedded":
        return list(GLYPH_CLASS_NAMES if glyphs else EMBEDDED_CLASS_NAMES)
    return list(UPSTREAM_GLYPH_CLASS_NAMES if glyphs else UPSTREAM_CLASS_NAMES)


def class_attributes(design: str = ORIGINAL_DESIGN, with_core: bool = False) -> list[tuple[str, ...]]:
    """(shape, body colour) of each of the 48 embedded classes, in class order (the same in both designs);
    ``with_core`` appends the core colour (for 'shape_colour' the body colour: a solid glyph)."""
    _check_design(design)
    attributes = []
    for s, shape in enumerate(SHAPES):
        for c, colour in enumerate(COLOURS):
            core = COLOURS[glyph_core_colour(s, c)] if design == "glyphs" else colour
            attributes.append((shape, colour, core) if with_core else (shape, colour))
    return attributes


@cache
def label_model(variant: str = "embedded") -> LabelModel:
    _check_variant(variant)
    rng = np.random.default_rng(_VARIANTS[variant][1])
    rank_of_class = rng.permutation(NUM_CLASSES)  # class c has frequency rank rank_of_class[c] (0-based)
    ranks = np.arange(1, NUM_CLASSES + 1, dtype=np.float64)  # Zipf with a floor: max(floor, top k^-s)
    base = np.maximum(PRIOR_FLOOR, PRIOR_TOP * ranks**-PRIOR_EXPONENT)[rank_of_class]
    top_class = int(np.argmin(rank_of_class))
    others = np.array([c for c in range(NUM_CLASSES) if c != top_class])
    multipliers = np.ones((NUM_CONTEXTS, NUM_CLASSES))
    for k in range(NUM_CONTEXTS):
        chosen = rng.permutation(others)[: 2 * CLASSES_PER_CONTEXT_EFFECT]
        multipliers[k, chosen[:CLASSES_PER_CONTEXT_EFFECT]] = CONTEXT_BOOST
        multipliers[k, chosen[CLASSES_PER_CONTEXT_EFFECT:]] = CONTEXT_DAMP
    multipliers /= multipliers.mean(axis=0, keepdims=True)  # contexts average back to the base prior
    context_probs = np.clip(base[None, :] * multipliers, 0.0, 1.0)
    base.flags.writeable = False
    context_probs.flags.writeable = False
    return LabelModel(base_prior=base, context_probs=context_probs)


def _exact_marginal(probs: np.ndarray) -> np.ndarray:
    """P(label c) for one context: Bernoulli draws, fill-in of empty images, random cap at MAX_OBJECTS."""
    num = probs.size
    # count_others[c, m] = P(m labels among the classes other than c), by the Poisson-binomial recursion.
    count_others = np.zeros((num, num))
    count_others[:, 0] = 1.0
    for j in range(num):
        p_j = np.full(num, probs[j])
        p_j[j] = 0.0
        shifted = np.zeros_like(count_others)
        shifted[:, 1:] = count_others[:, :-1]
        count_others = count_others * (1 - p_j)[:, None] + shifted * p_j[:, None]
    keep_probability = np.minimum(1.0, MAX_OBJECTS / np.arange(1, num + 1))  # c survives the cap
    p_empty = np.prod(1 - probs)
    return probs * (count_others @ keep_probability) + p_empty * probs / probs.sum()


def embedded_class_prior(variant: str = "embedded") -> np.ndarray:
    """Exact marginal probability of each of the 48 (shape, colour) classes, in class order."""
    return np.mean([_exact_marginal(p) for p in label_model(variant).context_probs], axis=0)


def describe_prior(frequencies: np.ndarray) -> dict:
    frequencies = np.asarray(frequencies, dtype=np.float64)
    return {
        "top_class_frequency": float(frequencies.max()),
        "classes_above_5pct": int((frequencies > 0.05).sum()),
        "classes_below_2pct": int((frequencies < 0.02).sum()),
        "labels_per_image": float(frequencies.sum()),
    }


def _sample_labels(num_images: int, model: LabelModel, rng: np.random.Generator) -> np.ndarray:
    contexts = rng.integers(NUM_CONTEXTS, size=num_images)
    probs = model.context_probs[contexts]
    labels = rng.random(probs.shape) < probs
    empty = np.flatnonzero(~labels.any(axis=1))
    if empty.size:
        cumulative = np.cumsum(probs[empty], axis=1)
        draws = rng.random(empty.size) * cumulative[:, -1]
        labels[empty, np.minimum((cumulative < draws[:, None]).sum(axis=1), NUM_CLASSES - 1)] = True
    crowded = np.flatnonzero(labels.sum(axis=1) > MAX_OBJECTS)
    if crowded.size:
        labels[crowded] = keep_random_k(labels[crowded], np.full(crowded.size, MAX_OBJECTS), rng)
    return labels


def _split_rng(seed: int, variant: str, split: str, stream: int | None = None) -> np.random.Generator:
    """The random stream of a split; ``stream`` names an extra stream of it (1: glyph cores)."""
    key = [int(seed), _VARIANTS[variant][0], _SPLITS[split][0]]
    return np.random.default_rng(key if stream is None else [*key, stream])


def sample_embedded_labels(num_images: int, seed: int = 0, variant: str = "embedded") -> np.ndarray:
    """The (num_images x 48) bool train labels that ``generate_*_dataset`` draws first (any design)."""
    _check_variant(variant)
    return _sample_labels(int(num_images), label_model(variant), _split_rng(seed, variant, "train"))


# Drawing ----------------------------------------------------------------------------------------------------
def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object coordinates (u, v) = (x - cx, y - cy) / radius; v points down."""
    name = SHAPES[shape]
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if name == "triangle":  # apex up at v = -1.05, base at v = 0.85 with half-width 1.1
        t = (v + 1.05) / 1.9
        return (t >= 0) & (t <= 1) & (np.abs(u) <= 1.1 * t)
    if name == "plus":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= RING_INNER**2)
    return np.abs(u) + np.abs(v) <= 1.12  # diamond


def _core_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The shape shrunk by CORE_SCALE about its centre; for the ring (a hole there), its band's inner part."""
    if SHAPES[shape] == "ring":
        r2 = u * u + v * v
        return (r2 >= RING_INNER**2) & (r2 <= RING_CORE_OUTER**2)
    return _shape_mask(shape, u / CORE_SCALE, v / CORE_SCALE)


@dataclass
class _Objects:
    """Per-image object slots (n x MAX_OBJECTS); unused slots have class -1, used slots come first."""

    classes: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    rgb: np.ndarray  # n x MAX_OBJECTS x 3
    core_rgb: np.ndarray | None = None  # glyphs only: colour of each object's core, n x MAX_OBJECTS x 3

    def slot_arrays(self) -> list[np.ndarray]:
        """The per-slot arrays, which a change of draw order permutes together."""
        arrays = [self.classes, self.cx, self.cy, self.radius, self.rgb]
        return arrays if self.core_rgb is None else [*arrays, self.core_rgb]


def _sample_objects(
    labels: np.ndarray, image_size: int, rng: np.random.Generator, core_rng: np.random.Generator | None = None
) -> _Objects:
    """Object slots of the labels; glyph core colours use ``core_rng`` only (the rest as in shape_colour)."""
    n = labels.shape[0]
    slots = np.arange(MAX_OBJECTS)
    n_labels = labels.sum(axis=1)
    n_objects = np.minimum(MAX_OBJECTS, n_labels + rng.binomial(EXTRA_OBJECT_TRIALS, EXTRA_OBJECT_PROB, n))
    keys = np.where(labels, rng.random(labels.shape), 2.0)
    label_order = np.argsort(keys, axis=1, kind="stable")[:, :MAX_OBJECTS]  # present classes, random order
    duplicate_pick = (rng.random((n, MAX_OBJECTS)) * n_labels[:, None]).astype(np.int64)
    classes = np.where(
        slots < n_labels[:, None], label_order, np.take_along_axis(label_order, duplicate_pick, 1)
    )
    classes = np.where(slots < n_objects[:, None], classes, -1)
    draw_keys = np.where(classes >= 0, rng.random(classes.shape), 2.0)
    classes = np.take_along_axis(classes, np.argsort(draw_keys, axis=1, kind="stable"), axis=1)

    radius = rng.uniform(*RADIUS_RANGE, size=(n, MAX_OBJECTS)) * image_size
    margin = 0.6 * radius
    cx = margin + rng.random((n, MAX_OBJECTS)) * (image_size - 2 * margin)
    cy = margin + rng.random((n, MAX_OBJECTS)) * (image_size - 2 * margin)
    colour = np.maximum(classes, 0) % len(COLOURS)
    brightness = rng.uniform(0.85, 1.1, size=(n, MAX_OBJECTS, 1))
    rgb = COLOUR_RGB[colour] * brightness + rng.normal(0.0, 10.0, size=(n, MAX_OBJECTS, 3))
    objects = _Objects(classes, cx, cy, radius, rgb.astype(np.float32))
    if core_rng is not None:
        core = glyph_core_colour(np.maximum(classes, 0) // len(COLOURS), colour)
        # Same brightness as the body: one object, one lighting; its own colour noise.
        core_rgb = COLOUR_RGB[core] * brightness + core_rng.normal(0.0, 10.0, size=(n, MAX_OBJECTS, 3))
        objects.core_rgb = core_rgb.astype(np.float32)
    return objects


def _backgrounds(n: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise: a 4 x 4 grid of grey-ish values bilinearly upsampled, n x S x S x 3."""
    grid = 4
    level = rng.uniform(50, 150, size=(n, 1, 1, 1))
    coarse = level + rng.normal(0, 22, size=(n, grid, grid, 1)) + rng.normal(0, 8, size=(n, grid, grid, 3))
    centres = (np.arange(image_size) + 0.5) / image_size * grid - 0.5
    low = np.clip(np.floor(centres).astype(int), 0, grid - 2)
    frac = np.clip(centres - low, 0.0, 1.0)
    interp = np.zeros((image_size, grid))
    interp[np.arange(image_size), low] = 1 - frac
    interp[np.arange(image_size), low + 1] = frac
    interp = interp.astype(np.float32)
    return np.einsum("yi,nijc,xj->nyxc", interp, coarse.astype(np.float32), interp, optimize=True)


def _object_masks(objects: _Objects, image_size: int, inside=_shape_mask) -> np.ndarray:
    """Boolean masks n x MAX_OBJECTS x S x S (empty for unused slots) of ``inside`` (shape or core)."""
    n = objects.classes.shape[0]
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    masks = np.zeros((n, MAX_OBJECTS, image_size, image_size), dtype=bool)
    shapes = np.where(objects.classes >= 0, objects.classes // len(COLOURS), -1)
    for shape in range(len(SHAPES)):
        rows, slots = np.nonzero(shapes == shape)
        if rows.size == 0:
            continue
        radius = objects.radius[rows, slots][:, None, None].astype(np.float32)
        u = (coords[None, None, :] - objects.cx[rows, slots][:, None, None]) / radius
        v = (coords[None, :, None] - objects.cy[rows, slots][:, None, None]) / radius
        masks[rows, slots] = inside(shape, u, v)
    return masks


def _owner_map(masks: np.ndarray) -> np.ndarray:
    """Index+1 of the topmost (last drawn) object at every pixel, 0 for background."""
    slot_ids = np.arange(1, masks.shape[-3] + 1, dtype=np.uint8).reshape(-1, 1, 1)
    return (masks * slot_ids).max(axis=-3)


def _visible_counts(owner: np.ndarray) -> np.ndarray:
    return np.stack([(owner == j + 1).sum(axis=(-2, -1)) for j in range(MAX_OBJECTS)], axis=-1)


def _poorly_visible(classes: np.ndarray, visible: np.ndarray, area: np.ndarray) -> int:
    """Slot of the best-visible instance of the first class that is nowhere MIN_VISIBLE_FRACTION visible."""
    fraction = visible / np.maximum(area, 1)
    for c in np.unique(classes[classes >= 0]):
        instances = np.flatnonzero(classes == c)
        best = instances[np.argmax(fraction[instances])]
        if fraction[best] < MIN_VISIBLE_FRACTION:
            return int(best)
    return -1


def _needs_reorder(classes: np.ndarray, visible: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Images (n,) having a class whose every instance is less than MIN_VISIBLE_FRACTION visible."""
    fraction = visible / np.maximum(area, 1)
    same_class = classes[..., :, None] == classes[..., None, :]
    best_of_class = np.where(same_class, fraction[..., None, :], -1.0).max(axis=-1)
    return ((classes >= 0) & (best_of_class < MIN_VISIBLE_FRACTION)).any(axis=-1)


def _ensure_visible(objects: _Objects, masks: np.ndarray, owner: np.ndarray, rng: np.random.Generator) -> int:
    """Move a hidden class's best instance on top (then elsewhere), in place; returns the images changed."""
    image_size = masks.shape[-1]
    area = masks.sum(axis=(-2, -1))
    visible = _visible_counts(owner)
    flagged = np.flatnonzero(_needs_reorder(objects.classes, visible, area))
    for i in flagged:
        for attempt in range(4 * MAX_OBJECTS):
            slot = _poorly_visible(objects.classes[i], visible[i], area[i])
            if slot < 0:
                break
            if attempt > 0:  # moving it up was not enough: a new random position too
                radius = objects.radius[i, slot]
                objects.cx[i, slot] = 0.6 * radius + rng.random() * (image_size - 1.2 * radius)
                objects.cy[i, slot] = 0.6 * radius + rng.random() * (image_size - 1.2 * radius)
                single = _Objects(*(a[i : i + 1] for a in objects.slot_arrays()))
                masks[i, slot] = _object_masks(single, image_size)[0, slot]
                area[i, slot] = masks[i, slot].sum()
            used = int((objects.classes[i] >= 0).sum())
            order = [j for j in range(used) if j != slot] + [slot] + list(range(used, MAX_OBJECTS))
            for array in (*objects.slot_arrays(), masks, area):
                array[i] = array[i][order]
            owner[i] = _owner_map(masks[i])
            visible[i] = _visible_counts(owner[i])
    return int(flagged.size)


def _compose(
    background: np.ndarray,
    objects: _Objects,
    owner: np.ndarray,
    rng: np.random.Generator,
    core_masks: np.ndarray | None = None,
) -> np.ndarray:
    """Paint each pixel in its topmost object's colour (core colour inside ``core_masks``), add noise."""
    n = owner.shape[0]
    top_slot = np.maximum(owner.astype(np.int64) - 1, 0)
    flat_index = np.arange(n)[:, None, None] * MAX_OBJECTS + top_slot
    object_rgb = objects.rgb.reshape(-1, 3)[flat_index]
    if core_masks is not None:
        in_core = np.take_along_axis(core_masks, top_slot[:, None], axis=1)[:, 0]
        object_rgb = np.where(in_core[..., None], objects.core_rgb.reshape(-1, 3)[flat_index], object_rgb)
    image = np.where(owner[..., None] > 0, object_rgb, background)
    image += 5.0 * rng.standard_normal(size=image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _bboxes(masks: np.ndarray) -> np.ndarray:
    """Tight [x, y, w, h] of every mask (n x MAX_OBJECTS x 4, integers)."""
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)
    size = masks.shape[-1]
    y0, x0 = rows.argmax(-1), cols.argmax(-1)
    y1, x1 = size - rows[..., ::-1].argmax(-1), size - cols[..., ::-1].argmax(-1)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)


# Writing a split --------------------------------------------------------------------------------------------
@dataclass
class GeneratedSplit:
    """What one split contains: image ids (1..N) and the intended (N x C) bool labels."""

    image_ids: list[int]
    labels: np.ndarray
    annotation_file: str
    image_dir: str
    stats: dict = field(default_factory=dict)


def _categories(variant: str, design: str) -> list[dict]:
    """Supercategory: the shape (embedded) or the attribute kind (upstream)."""
    names = class_names(variant, design)
    return [
        {
            "id": c + 1,
            "name": name,
            "supercategory": SHAPES[c // len(COLOURS)] if variant == "embedded" else name.split("_")[0],
        }
        for c, name in enumerate(names)
    ]


def _category_ids_of(variant: str, design: str, combo_class: int) -> tuple[int, ...]:
    """Category ids (1-based) that an object of the 48-class combination ``combo_class`` is annotated with."""
    if variant == "embedded":
        return (combo_class + 1,)
    shape, colour = divmod(combo_class, len(COLOURS))
    ids = (shape + 1, len(SHAPES) + colour + 1)
    if design == "glyphs":
        ids += (len(SHAPES) + len(COLOURS) + glyph_core_colour(shape, colour) + 1,)
    return ids


def _draw_chunk(labels, image_size, rng, core_rng=None):
    objects = _sample_objects(labels, image_size, rng, core_rng)
    background = _backgrounds(labels.shape[0], image_size, rng)
    masks = _object_masks(objects, image_size)
    owner = _owner_map(masks)
    fixed = _ensure_visible(objects, masks, owner, rng)
    # Cores are cut from the final placement (after visibility fixes); core & mask guards the shapes.
    core_masks = None if core_rng is None else _object_masks(objects, image_size, _core_mask) & masks
    images = _compose(background, objects, owner, rng, core_masks)
    return objects, masks, owner, images, fixed


def _write_split(out_dir, split, num_images, image_size, seed, variant, design, chunk=1024) -> GeneratedSplit:
    rng = _split_rng(seed, variant, split)
    # Glyph cores get their own stream so every other pixel equals the shape_colour design's.
    core_rng = _split_rng(seed, variant, split, stream=1) if design == "glyphs" else None
    combo_labels = _sample_labels(num_images, label_model(variant), rng)
    image_dir_name = _SPLITS[split][1]
    image_dir = os.path.join(out_dir, image_dir_name)
    os.makedirs(image_dir, exist_ok=True)
    images_json, annotations_json, pending = [], [], []
    labels = np.zeros((num_images, len(class_names(variant, design))), dtype=bool)
    visibility_fixed = 0
    for start in range(0, num_images, chunk):
        objects, masks, owner, images, changed = _draw_chunk(
            combo_labels[start : start + chunk], image_size, rng, core_rng
        )
        visibility_fixed += changed
        boxes, visible = _bboxes(masks), _visible_counts(owner)
        for offset in range(images.shape[0]):
            image_id = start + offset + 1
            file_name = f"embedded_{image_dir_name}_{image_id:06d}.png"
            images_json.append(
                {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
            )
            pending.append((os.path.join(image_dir, file_name), images[offset]))
            for slot in np.flatnonzero(objects.classes[offset] >= 0):
                for category_id in _category_ids_of(variant, design, int(objects.classes[offset, slot])):
                    labels[image_id - 1, category_id - 1] = True
                    annotations_json.append(
                        {
                            "id": len(annotations_json) + 1,
                            "image_id": image_id,
                            "category_id": category_id,
                            "bbox": [int(x) for x in boxes[offset, slot]],
                            "area": int(max(visible[offset, slot], 1)),
                            "iscrowd": 0,
                        }
                    )
    # zlib and file writes release the GIL, so a couple of threads overlap encoding with I/O.
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        list(pool.map(_save_png, pending, chunksize=256))
    annotation_file = os.path.join(out_dir, "annotations", f"instances_{image_dir_name}.json")
    info = {"description": f"synthetic {variant} dataset", "version": GENERATOR_VERSION, "seed": int(seed)}
    if design != ORIGINAL_DESIGN:  # ORIGINAL_DESIGN's files stay byte-identical to the pre-design ones
        info["design"] = design
    _write_json(
        annotation_file,
        {
            "info": info,
            "licenses": [],
            "images": images_json,
            "annotations": annotations_json,
            "categories": _categories(variant, design),
        },
    )
    stats = {
        "images": num_images,
        "objects": len(annotations_json) // len(_category_ids_of(variant, design, 0)),
        "visibility_fixed": visibility_fixed,
    }
    return GeneratedSplit(list(range(1, num_images + 1)), labels, annotation_file, image_dir, stats)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(image: np.ndarray) -> bytes:
    """Minimal 8-bit RGB PNG (filter 0 on every row, zlib level 1): ~3x faster than PIL for tiny images."""
    height, width, _ = image.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + _png_chunk(b"IEND", b"")
    )


def _save_png(item) -> None:
    path, array = item
    with open(path, "wb") as handle:
        handle.write(encode_png(array))


def _write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # json.dumps (C encoder) is several times faster than json.dump's pure-Python iterencode.
    text = json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


# Public generators ------------------------------------------------------------------------------------------
CONFIG_FILE = "embedded_config.json"


@dataclass
class GeneratedDataset:
    out_dir: str
    class_names: list[str]
    splits: dict[str, GeneratedSplit]
    seconds: float
    config: dict


def _validate_sizes(n_train, n_test, image_size, seed, design) -> None:
    _check_design(design)
    for name, value, minimum in (
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("image_size", image_size, 16),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")


def dataset_config(
    variant: str, n_train: int, n_test: int, image_size: int, seed: int, design: str = ORIGINAL_DESIGN
) -> dict:
    return {
        "variant": variant,
        "design": design,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "image_size": int(image_size),
        "seed": int(seed),
        "generator_version": GENERATOR_VERSION,
    }


def _generate(out_dir, variant, n_train, n_test, image_size, seed, design) -> GeneratedDataset:
    _validate_sizes(n_train, n_test, image_size, seed, design)
    out_dir = os.fspath(out_dir)
    start = time.perf_counter()
    config = dataset_config(variant, n_train, n_test, image_size, seed, design)
    config_path = os.path.join(out_dir, CONFIG_FILE)
    if os.path.exists(config_path):
        os.remove(config_path)  # a half-written rebuild must not look complete
    splits = {
        split: _write_split(out_dir, split, count, image_size, seed, variant, design)
        for split, count in (("train", n_train), ("val", n_test))
    }
    _write_json(config_path, config)
    names = class_names(variant, design)
    return GeneratedDataset(out_dir, names, splits, time.perf_counter() - start, config)


def generate_embedded_dataset(
    out_dir, n_train=6000, n_test=3000, image_size=32, seed=0, design=ORIGINAL_DESIGN
):
    return _generate(out_dir, "embedded", n_train, n_test, image_size, seed, design)


def generate_upstream_dataset(
    out_dir, n_train=6000, n_test=1000, image_size=32, seed=0, design=ORIGINAL_DESIGN
):
    """14 factorised classes (shape_*, colour_*); 22 with core_* for the glyphs design."""
    return _generate(out_dir, "upstream", n_train, n_test, image_size, seed, design)


def existing_config(out_dir) -> dict | None:
    path = os.path.join(os.fspath(out_dir), CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    # Folders written before designs existed hold the shape_colour design (its files are unchanged).
    config.setdefault("design", ORIGINAL_DESIGN)
    required = [os.path.join(out_dir, "annotations", f"instances_{d}.json") for _, d in _SPLITS.values()]
    return config if all(os.path.isfile(p) for p in required) else None


def ensure_dataset(
    out_dir,
    variant="embedded",
    n_train=None,
    n_test=None,
    image_size=32,
    seed=0,
    force=False,
    design=ORIGINAL_DESIGN,
):
    """The GeneratedDataset, or None when ``out_dir`` already holds one with the same config (design
    included). A non-empty folder without a generated dataset is refused unless ``force``."""
    _check_variant(variant)
    _check_design(design)
    n_train = 6000 if n_train is None else n_train
    n_test = (3000 if variant == "embedded" else 1000) if n_test is None else n_test
    wanted = dataset_config(variant, n_train, n_test, image_size, seed, design)
    out_dir = os.fspath(out_dir)
    found = existing_config(out_dir)
    if not force and found == wanted:
        return None
    if not force and found is None and os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(
            f"--out {out_dir} is a non-empty folder without {CONFIG_FILE}; choose an empty or new folder, "
            "or pass --force to write the dataset into it"
        )
    return _generate(out_dir, variant, n_train, n_test, image_size, seed, design)


def write_embedded_csv(out_dir, layout: str = "lists", unannotated: float = 0.0, seed: int = 0) -> list[str]:
    """train.csv, val.csv and classes.txt of a written dataset, next to its COCO files (docs/your_data.md);
    each train label is written as not annotated with probability ``unannotated`` (RPS); val is complete."""
    out_dir = os.fspath(out_dir)
    written = []
    for split, (_, folder) in _SPLITS.items():
        annotation_file = os.path.join(out_dir, "annotations", f"instances_{folder}.json")
        with open(annotation_file, encoding="utf-8") as handle:
            content = json.load(handle)
        categories = sorted(content["categories"], key=lambda category: category["id"])
        column_of = {category["id"]: c for c, category in enumerate(categories)}
        row_of = {image["id"]: r for r, image in enumerate(content["images"])}
        labels = np.zeros((len(row_of), len(categories)), dtype=np.int8)
        for annotation in content["annotations"]:
            labels[row_of[annotation["image_id"]], column_of[annotation["category_id"]]] = 1
        if split == "train" and unannotated > 0:
            labels = simulate_partial_labels(labels, "rps", unannotated, seed)
        images = [f"{folder}/{image['file_name']}" for image in content["images"]]
        written.append(os.path.join(out_dir, f"{split}.csv"))
        write_csv_labels(written[-1], images, labels, [category["name"] for category in categories], layout)
    written.append(os.path.join(out_dir, CLASSES_FILE))
    with open(written[-1], "w", encoding="utf-8") as handle:
        handle.writelines(f"{category['name']}\n" for category in categories)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic embedded dataset in the COCO layout "
                                     "(--format csv: also as CSV).", formatter_class=HelpFormatter)
    data, output = parser.add_argument_group("data"), parser.add_argument_group("output")
    data.add_argument("--n_train", type=int, default=None, help="train images (default 6000)")
    data.add_argument("--n_test", type=int, default=None, help="val images (default 3000; upstream 1000)")
    data.add_argument("--image_size", type=int, default=32, help="image side in pixels")
    data.add_argument("--seed", type=int, default=0, help="seed of the generator")
    data.add_argument("--upstream", action="store_true", help="write the factorised upstream set")
    data.add_argument(
        "--design",
        choices=DESIGNS,
        default=ORIGINAL_DESIGN,
        help="class design: shape_colour (6 shapes x 8 colours) or glyphs (adds a core colour; "
        "any two classes share at most one of shape, body colour, core colour; the design the demo runs)",
    )
    output.add_argument("--out", default="data/embedded", help="output folder")
    output.add_argument("--force", action="store_true", help="rebuild even if the folder matches the config")
    output.add_argument("--format", choices=("coco", "csv"), default="coco",
                        help="csv: also write train.csv, val.csv and classes.txt (--dataset_type csv)")
    output.add_argument("--layout", choices=CSV_LAYOUTS, default="lists",
                        help="--format csv: lists (image,positives,negatives) or wide (one column per class)")
    output.add_argument("--unannotated", type=float, default=0.0, metavar="P",
                        help="--format csv: write each train label as not annotated with probability P")
    args = parser.parse_args(argv)
    if not 0 <= args.unannotated < 1:
        parser.error(f"--unannotated {args.unannotated}: give a probability in [0, 1), e.g. 0.5")
    variant = "upstream" if args.upstream else "embedded"
    result = ensure_dataset(
        args.out, variant, args.n_train, args.n_test, args.image_size, args.seed, args.force, args.design
    )
    if args.format == "csv":
        written = write_embedded_csv(args.out, args.layout, args.unannotated, args.seed)
        print(f"{args.layout} CSV labels: {', '.join(written)} (--dataset_type csv --data {args.out})")
    if result is None:
        print(
            f"{args.out} already holds the requested {variant} dataset ({args.design}); nothing to do "
            "(--force rebuilds)"
        )
        return
    for split, info in result.splits.items():
        frequencies = info.labels.mean(axis=0)
        print(
            f"{split}: {info.stats['images']} images, {info.stats['objects']} objects "
            f"-> {info.annotation_file}"
        )
        print(f"  measured prior: {describe_prior(frequencies)}")
    print(f"{variant} dataset ({args.design}) written to {result.out_dir} in {result.seconds:.2f} s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
