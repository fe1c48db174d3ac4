"""Tag pictures with a trained multi-label model (the paper's demo, completed): the ``--top_k`` classes
above ``--th`` are printed, drawn under the picture (``<output_dir>/<picture>_tags.png``) and written to
``<output_dir>/predictions.csv``. Input size and architecture come from the checkpoint (the paper's: 224 px);
pictures are scaled to [0, 1] without mean/std, as in training.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from src.args import (
    HelpFormatter,
    add_flag,
    device_parser,
    image_size,
    probability,
    require_weights,
    unsafe_pickle_parser,
)
from src.data.image_io import ImageReadError, load_rgb
from src.data.labels import DatasetError
from src.data.openimages import read_class_list
from src.data.transforms import build_val_transform
from src.metrics import check_finite_scores
from src.models import load_model_for_command
from src.utils.amp import autocast_context, resolve_amp
from src.utils.cli import run_cli
from src.utils.distributed import resolve_device
from src.utils.io import prepare_output_folder
from src.utils.values import printable

PAPER_MODEL_PATH = "./models_local/mtresnet_opim_86.72.pth"  # the paper: ./models/
PAPER_DESCRIPTIONS_PATH = "./data/oidv6-class-descriptions.csv"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
OUTPUT_SUFFIX = "_tags.png"  # the annotated pictures this script writes; never tagged again
# Keys without "_" and "-": MS-COCO (an older paper README) is mscoco.
DATASET_ALIASES = {"openimagess": "openimages", "openimages": "openimages", "coco": "coco", "mscoco": "coco",
                   "lvis": "lvis", "csv": "csv"}
MIN_DISPLAY_SIZE = 384  # small pictures (e.g. 32 px scenes) are enlarged so the drawing is readable
MAX_DISPLAY_SIZE = 1024  # large photographs are shrunk so the 16 px text stays readable
PAPER_INPUT_SIZE = 224  # the paper's infer.py default, for checkpoints that do not store their size
SETTING_FLAGS = {"image_size": ("--input_size", "input_size"), "model_name": ("--model_name", "model_name")}
TRAINED_HERE_THRESHOLD = 0.5  # train.py's --thre: the threshold suggested when nothing passes --th


def dataset_type(text: str) -> str:
    key = text.lower().replace("_", "").replace("-", "")
    if key not in DATASET_ALIASES:
        raise argparse.ArgumentTypeError(f"unknown dataset type {text!r}; use coco, openimages, lvis or csv")
    return DATASET_ALIASES[key]


def top_k_count(text: str) -> int:
    value = float(text)  # the paper declared --top_k as float (default 30)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    own = argparse.ArgumentParser(add_help=False)
    data, model = own.add_argument_group("data"), own.add_argument_group("model")
    add_flag(data, "--pic_path", type=str, default="./pics",
             help="a picture or a folder of pictures (its files with an image extension, not recursive)")
    add_flag(data, "--dataset_type", type=dataset_type, default="openimages",
             help="coco, openimages, lvis or csv (only selects the default class descriptions file)")
    add_flag(data, "--class_description_path", type=str, default=None,
             help="CSV LabelName,DisplayName mapping class ids (OpenImages MIDs) to names; default "
                  f"{PAPER_DESCRIPTIONS_PATH} for openimages when that file exists")
    add_flag(model, "--model_path", type=str, default=PAPER_MODEL_PATH,
             help="checkpoint: ours (train.py) or the paper's")
    add_flag(model, "--model_name", type=str, default=None,
             help="architecture; default: stored in our checkpoints, inferred from the paper's TResNet "
                  "weights (the paper's default was tresnet_m); needed for other bare state dicts")
    add_flag(model, "--input_size", type=image_size, default=None,
             help="the picture is resized to this square size; default: the size stored in the checkpoint "
                  f"(ours: train.py's --image-size), else the paper's {PAPER_INPUT_SIZE}")
    parser = argparse.ArgumentParser(description="Tag pictures with a multi-label model (CSL demo).",
                                     formatter_class=HelpFormatter,
                                     parents=[own, unsafe_pickle_parser(), device_parser()])
    output = parser.add_argument_group("output")
    add_flag(output, "--th", type=probability, default=0.97, help="a tag needs a score above this threshold")
    add_flag(output, "--top_k", type=top_k_count, default=30, help="at most this many tags per picture")
    add_flag(output, "--output_dir", type=str, default="outputs/infer",
             help="folder for <picture>_tags.png and predictions.csv")
    return parser


def shown(path: str) -> str:
    return path if path.isprintable() else repr(path)


def list_pictures(pic_path: str) -> list[str]:
    """The picture, or the sorted image files of a folder without this script's ``*_tags.png``."""
    if os.path.isdir(pic_path):
        paths = [os.path.join(pic_path, name) for name in os.listdir(pic_path)
                 if name.lower().endswith(IMAGE_EXTENSIONS)]
        paths = [path for path in paths if os.path.isfile(path)]
        found = sorted(path for path in paths if not path.lower().endswith(OUTPUT_SUFFIX))
        outputs = len(paths) - len(found)
        if outputs:
            print(f"note: skipped {outputs} annotated picture(s) *{OUTPUT_SUFFIX} in {shown(pic_path)} "
                  "(outputs of this script)")
        if not found:
            raise ValueError(f"--pic_path: folder {pic_path!r} holds no picture (extensions "
                             f"{', '.join(IMAGE_EXTENSIONS)}, not *{OUTPUT_SUFFIX}); pass a picture or a "
                             "folder of pictures")
        return found
    if not os.path.isfile(pic_path):
        raise FileNotFoundError(f"--pic_path: {pic_path!r} does not exist; pass a picture or a folder of "
                                f"pictures (e.g. --pic_path pics)")
    return [pic_path]


def read_class_descriptions(path: str) -> dict[str, str]:
    """{LabelName: DisplayName} of a CSV ``LabelName,DisplayName``; rows without a name are left out."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--class_description_path: {path!r} does not exist; pass a CSV with columns "
                                "LabelName,DisplayName (e.g. oidv6-class-descriptions.csv) or omit the flag")
    try:
        mids, names = read_class_list(path)
    except DatasetError as error:  # its message names the file
        raise ValueError(f"--class_description_path: {error}") from error
    except ValueError as error:  # pandas' ParserError / EmptyDataError, UnicodeDecodeError: no file named
        raise ValueError(f"--class_description_path: {path!r} is not a UTF-8 CSV with columns "
                         f"LabelName,DisplayName ({' '.join(str(error).split())})") from error
    if names is None:  # a .txt class list: MIDs only
        raise ValueError(f"--class_description_path: {path!r} lists MIDs without names; pass a CSV with "
                         "columns LabelName,DisplayName (e.g. oidv6-class-descriptions.csv)")
    return {mid: name for mid, name in zip(mids, names) if name}


def resolve_display_names(class_names: list[str], args) -> list[str]:
    path = args.class_description_path
    if path is None and args.dataset_type == "openimages" and os.path.isfile(PAPER_DESCRIPTIONS_PATH):
        path = PAPER_DESCRIPTIONS_PATH
    if path is None:
        if any(name.startswith("/m/") for name in class_names):
            print("note: the classes are OpenImages MIDs; pass --class_description_path "
                  "oidv6-class-descriptions.csv to print their names")
        return class_names
    mapping = read_class_descriptions(path)
    unmapped = [name for name in class_names if name not in mapping]
    if len(unmapped) == len(class_names):
        raise ValueError(f"--class_description_path: none of the model's classes (e.g. {class_names[0]!r}) "
                         f"is listed in {path!r}; pass the descriptions of the dataset the model was "
                         "trained on")
    if unmapped:
        print(f"note: {len(unmapped)} of {len(class_names)} classes are not in {path} and keep their id "
              f"(e.g. {unmapped[0]!r})")
    return [mapping.get(name, name) for name in class_names]


def no_tags_warning(count: int, threshold: float) -> str:
    text = f"warning: none of the {count} picture(s) got a tag: no class scored above --th {threshold:g}"
    if threshold > TRAINED_HERE_THRESHOLD:
        return (f"{text} (the paper's threshold, set for its released OpenImages models). For a model "
                f"trained here try --th {TRAINED_HERE_THRESHOLD:g} (train.py's --thre), or lower")
    return f"{text}. Try a lower threshold, e.g. --th {threshold / 2:g}, and check --model_path"


NON_FINITE_HINT = ("the checkpoint's weights hold NaN/inf (e.g. a diverged training run) or the model "
                   "overflows; pass the checkpoint of a run that did not diverge (or try --no-amp)")


@torch.no_grad()
def predict_tags(model, picture: Image.Image, class_names: list[str], args, device, transform, *,
                 amp_dtype: torch.dtype | None = None) -> list[tuple[str, float]]:
    """(name, score) of the top_k classes with score > th, highest first."""
    tensor = transform(picture).unsqueeze(0).to(device)
    with autocast_context(device, amp_dtype):
        logits = model(tensor).float()
    check_finite_scores(logits, f"--model_path: the outputs of {args.model_path!r}", hint=NON_FINITE_HINT)
    scores = torch.sigmoid(logits)[0].cpu().numpy()
    order = np.argsort(-scores, kind="stable")[: args.top_k]
    return [(class_names[i], float(scores[i])) for i in order if scores[i] > args.th]


def draw_tags(picture: Image.Image, tags: list[tuple[str, float]], threshold: float) -> Image.Image:
    scale = max(1, -(-MIN_DISPLAY_SIZE // min(picture.size)))
    shown = picture
    if scale > 1:  # whole-pixel enlargement keeps small synthetic scenes sharp
        shown = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    elif max(picture.size) > MAX_DISPLAY_SIZE:  # keep the text legible next to large photographs
        shown = picture.copy()
        shown.thumbnail((MAX_DISPLAY_SIZE, MAX_DISPLAY_SIZE), Image.LANCZOS)
    font = ImageFont.load_default(size=16)
    lines = [f"{name}  {score:.3f}" for name, score in tags] or [f"no class scored above {threshold:g}"]
    lines.insert(0, "Predicted classes:")
    line_height = 22
    canvas = Image.new("RGB", (shown.width, shown.height + 10 + line_height * len(lines)), "white")
    canvas.paste(shown, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((8, shown.height + 5 + i * line_height), text, fill="black", font=font)
    return canvas


def output_name(path: str, used: set[str]) -> str:
    stem, ext = os.path.splitext(os.path.basename(path))
    name = f"{stem}_tags.png"
    if name in used:  # a.jpg and a.png in one folder
        name = f"{stem}_{ext.lstrip('.')}_tags.png"
    used.add(name)
    return name


def csv_rows(picture: str, tags: list[tuple[str, float]]) -> list[list]:
    if not tags:
        return [[picture, "", "", ""]]
    return [[picture, rank + 1, name, f"{score:.6f}"] for rank, (name, score) in enumerate(tags)]


def main(argv=None) -> list[dict]:
    """Returns [{'picture', 'tags': [(name, score)], 'output'}] of the pictures read."""
    args = build_parser().parse_args(argv)
    require_weights(args.model_path, "--model_path", "checkpoint",
                    "pass a .pth written by train.py or a released CSL model")
    loaded = load_model_for_command(args, SETTING_FLAGS, {"image_size": PAPER_INPUT_SIZE}, "--model_path")
    transform = build_val_transform(args.input_size, draft=False)
    folder_mode = os.path.isdir(args.pic_path)
    pictures = list_pictures(args.pic_path)
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(device, args.amp, args.amp_dtype, training=False)
    print("Inference demo with a CSL model")
    print(loaded.report())
    model = loaded.model.to(device)
    class_names = resolve_display_names(list(loaded.class_names), args)
    results, used, skipped = [], set(), 0
    csv_path = os.path.join(args.output_dir, "predictions.csv")
    with contextlib.ExitStack() as stack:
        handle = writer = None
        for path in pictures:
            try:
                # decodes fully (a truncated file fails here, not later); phone photos stand upright by EXIF
                picture = ImageOps.exif_transpose(load_rgb(path))
            except ImageReadError as error:
                why = " ".join(str(error.__cause__ or error.reason).split())  # PIL's message, one line
                if not folder_mode:
                    raise ValueError(f"--pic_path: {path!r} is not a picture PIL can read ({why}); pass "
                                     "JPEG/PNG/... files") from error
                skipped += 1
                print(f"warning: skipped {path!r}: not a picture PIL can read ({why})", file=sys.stderr)
                continue
            try:
                tags = predict_tags(model, picture, class_names, args, device, transform, amp_dtype=amp_dtype)
            except MemoryError:  # PIL and numpy raise it without a text
                raise MemoryError(f"out of memory tagging {shown(path)} at --input_size {args.input_size}; "
                                  "pass a smaller --input_size") from None
            if writer is None:  # here: a bad (first) picture or checkpoint leaves no empty folder
                prepare_output_folder(args.output_dir, "--output_dir")
                # surrogateescape: a file name that is not valid UTF-8 is written back as its own bytes
                handle = stack.enter_context(open(csv_path, "w", newline="", encoding="utf-8",
                                                  errors="surrogateescape"))
                writer = csv.writer(handle)
                writer.writerow(["image", "rank", "class", "score"])
            print(f"{shown(path)}: " + (", ".join(f"{printable(name)} ({score:.3f})" for name, score in tags)
                                        or f"no class scored above {args.th:g}"))
            output = os.path.join(args.output_dir, output_name(path, used))
            draw_tags(picture, tags, args.th).save(output)
            writer.writerows(csv_rows(path, tags))
            handle.flush()  # an interrupted run keeps the rows of the pictures done
            results.append({"picture": path, "tags": tags, "output": output})
    if not results:
        raise ValueError(f"--pic_path: none of the {len(pictures)} picture(s) in folder {args.pic_path!r} "
                         "could be read (see the warnings above); pass JPEG/PNG/... files")
    if skipped:
        print(f"{skipped} unreadable picture(s) skipped")
    if not any(result["tags"] for result in results):
        sys.stdout.flush()  # the warning after the per-picture lines, also when both go to one terminal
        print(no_tags_warning(len(results), args.th), file=sys.stderr)
    print(f"annotated pictures and predictions.csv written to {shown(args.output_dir)}")
    return results


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
