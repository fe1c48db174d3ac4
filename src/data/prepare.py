"""``python -m src.data.prepare coco2014|lvis_v1|openimages_csl --root DIR [--dry-run]``: download a dataset
of the paper and lay it out as train.py reads it (docs/datasets.md). Each file of `DATASETS` is downloaded
(`src.utils.download`: resumable, checked), unpacked path-safely into ROOT and deleted; a stamp in
``ROOT/.prepare/`` makes the same command skip finished files.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.utils import CallbackIOWrapper

from src.data.labels import DatasetError
from src.utils.cli import ConfigError, HelpFormatter, run_cli
from src.utils.download import download, human_bytes, progress_bar
from src.utils.io import existing_ancestor, lock_folder, unlock_folder

BASE_URL_ENV = "CSL_PREPARE_BASE_URL"
STATE_DIR = ".prepare"
SAMPLES_PER_SPLIT = 20  # filepaths of data.csv looked up per split to find the OpenImages image root

SOURCES = {
    "coco_zips": "http://images.cocodataset.org/zips",
    "coco_annotations": "http://images.cocodataset.org/annotations",
    "lvis": "https://dl.fbaipublicfiles.com/LVIS",
    "openimages_csl": "https://miil-public-eu.oss-eu-central-1.aliyuncs.com/public/Open_Images_V6",
}
GB = 1_000_000_000
MB = 1_000_000


@dataclass(frozen=True)
class RemoteFile:
    """``kind``: 'zip' / 'tar' (unpacked into ``ROOT/unpack_to``) or 'file' (kept at ``ROOT/<name>``);
    ``size``, ``unpacked``: bytes (``exact`` False: estimates); ``members``: those to unpack (None: all)."""

    name: str
    source: str
    size: int
    exact: bool
    checksum: str | None
    kind: str
    unpacked: int
    unpack_to: str = ""
    members: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """``layout``: the paths that must exist under ROOT afterwards; ``metadata``: --metadata relative to
    ROOT (None: not passed)."""

    title: str
    dataset_type: str
    num_classes: int
    image_size: int
    files: tuple[RemoteFile, ...]
    layout: tuple[str, ...]
    metadata: str | None = None
    simulate: bool = False  # fully labelled: the paper simulates partial labels (COCO)
    notes: tuple[str, ...] = field(default_factory=tuple)


COCO_IMAGES_2017 = (
    RemoteFile("train2017.zip", "coco_zips", 19_336_861_798, True, "md5:cced6f7f71b7629ddf16f17bbcfab6b2",
               "zip", 19_337 * MB),
    RemoteFile("val2017.zip", "coco_zips", 815_585_330, True, "md5:442b8da7639aecaf257c1dceb8ba8c80",
               "zip", 816 * MB),
)

DATASETS: dict[str, DatasetSpec] = {
    "coco2014": DatasetSpec(
        "MS-COCO 2014 (82,081 train / 40,137 val images with labels, 80 classes)", "coco", 80, 448, (
            RemoteFile("train2014.zip", "coco_zips", 13_510_573_713, True,
                       "md5:0da8c0bd3d6becc4dcb32757491aca88", "zip", 13_511 * MB),
            RemoteFile("val2014.zip", "coco_zips", 6_645_013_297, True,
                       "md5:a3d79f5ed8d289b7a7554ce06a5782b3", "zip", 6_645 * MB),
            RemoteFile("annotations_trainval2014.zip", "coco_annotations", 252_872_794, True,
                       "md5:0a379cfc70b0e71301e0f377548639bd", "zip", 490 * MB,
                       members=("annotations/instances_train2014.json",
                                "annotations/instances_val2014.json")),
        ), layout=("annotations/instances_train2014.json", "annotations/instances_val2014.json", "train2014",
                   "val2014"), simulate=True),
    "lvis_v1": DatasetSpec(
        "LVIS v1 (1,203 classes, federated labels) on COCO 2017 images", "lvis", 1203, 448, (
            RemoteFile("lvis_v1_train.json.zip", "lvis", 350 * MB, False, None, "zip", 1_100 * MB,
                       unpack_to="annotations"),
            RemoteFile("lvis_v1_val.json.zip", "lvis", 64 * MB, False, None, "zip", 200 * MB,
                       unpack_to="annotations"),
            *COCO_IMAGES_2017,
        ), layout=("annotations/lvis_v1_train.json", "annotations/lvis_v1_val.json", "train2017", "val2017"),
        metadata="annotations",
        notes=("LVIS v1 val images come from COCO 2017 train and val: both image zips are needed.",)),
    "openimages_csl": DatasetSpec(
        "OpenImages V6 as processed by the CSL authors (9,605 classes, short edge 256)", "openimages",
        9605, 224, (
            RemoteFile("data.csv", "openimages_csl", 1_200 * MB, False, None, "file", 0),
            RemoteFile("mid_to_classes.pth", "openimages_csl", 1 * MB, False, None, "file", 0),
            RemoteFile("test.tar.gz", "openimages_csl", 3 * GB, False, None, "tar", 3 * GB),
            RemoteFile("train.tar.gz", "openimages_csl", 185 * GB, False, None, "tar", 185 * GB),
        ), layout=("data.csv", "mid_to_classes.pth"), metadata=".",
        notes=("The publisher lists no sizes: they are rough estimates; each download is checked against the "
               "server's Content-Length.",
               "OpenImages license: https://storage.googleapis.com/openimages/web/factsfigures.html")),
}


# ------------------------------------------------------------------------------------------ the plan
@dataclass
class Step:
    remote: RemoteFile
    url: str
    local: str  # the downloaded file: ROOT/downloads/NAME for archives, ROOT/NAME for plain files
    stamp: str
    done: bool

    @property
    def partial_bytes(self) -> int:
        part = self.local + ".part"
        return os.path.getsize(part) if os.path.isfile(part) else 0


def parse_url_overrides(pairs: list[str], spec: DatasetSpec) -> dict[str, str]:
    names = [f.name for f in spec.files]
    overrides = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not url:
            raise ValueError(f"--url {pair!r}: expected NAME=URL, e.g. --url {names[0]}=file:///mirror/{names[0]}")
        if name not in names:
            raise ValueError(f"--url {pair!r}: {name!r} is not a file of this dataset; its files are {names}")
        overrides[name] = as_url(url)
    return overrides


def as_url(location: str) -> str:
    """A plain path (a local mirror) becomes its ``file://`` URL."""
    return location if "://" in location else Path(os.path.abspath(location)).as_uri()


def resolve_url(remote: RemoteFile, base_url: str | None, overrides: dict[str, str]) -> str:
    if remote.name in overrides:
        return overrides[remote.name]
    return f"{(base_url or SOURCES[remote.source]).rstrip('/')}/{remote.name}"


def build_plan(spec: DatasetSpec, root: str, downloads: str, base_url: str | None,
               overrides: dict[str, str]) -> list[Step]:
    steps = []
    for remote in spec.files:
        local = os.path.join(downloads if remote.kind != "file" else root, remote.name)
        stamp = os.path.join(root, STATE_DIR, remote.name + ".json")
        done = os.path.isfile(stamp) and (remote.kind != "file" or os.path.isfile(local))
        steps.append(Step(remote, resolve_url(remote, base_url, overrides), local, stamp, done))
    return steps


def disk_needs(steps: list[Step], keep_archives: bool) -> dict:
    """Bytes to download and the disk use of the pending steps, at the peak and at the end: the steps run
    in order, each archive is unpacked next to itself and then deleted (unless ``keep_archives``)."""
    pending = [s for s in steps if not s.done]
    used = peak = 0
    for step in pending:
        remote = step.remote
        if remote.kind == "file":
            used += remote.size
        else:
            peak = max(peak, used + remote.size + remote.unpacked)
            used += remote.unpacked + (remote.size if keep_archives else 0)
        peak = max(peak, used)
    return {"download": sum(max(s.remote.size - s.partial_bytes, 0) for s in pending), "peak": peak,
            "final": used, "exact": all(s.remote.exact for s in pending)}


def describe_plan(name: str, spec: DatasetSpec, root: str, steps: list[Step], needs: dict) -> str:
    approx = "" if needs["exact"] else "~"
    lines = [f"{name}: {spec.title}", f"root: {os.path.abspath(root)}", ""]
    width = max(len(s.remote.name) for s in steps)
    lines.append(f"  {'file':<{width}}  {'size':>10}  {'check':<6}  {'then':<26}  status")
    for step in steps:
        remote = step.remote
        size = ("" if remote.exact else "~") + human_bytes(remote.size)
        check = remote.checksum.split(":")[0] if remote.checksum else "size" if remote.exact else "-"
        if remote.kind == "file":
            then = f"keep as {remote.name}"
        else:
            target = (remote.unpack_to or ".") + "/"
            then = f"unpack {'part' if remote.members else 'all'} to {target}"
        status = "to download"
        if step.done:
            status = "done"
        elif step.partial_bytes:
            status = f"partial ({human_bytes(step.partial_bytes)})"
        lines.append(f"  {remote.name:<{width}}  {size:>10}  {check:<6}  {then:<26}  {status}")
        lines.append(f"  {'':<{width}}  from {step.url}")
    free = shutil.disk_usage(existing_ancestor(root)).free
    lines += ["", f"download: {approx}{human_bytes(needs['download'])}; disk needed: {approx}"
              f"{human_bytes(needs['peak'])} at the peak, {approx}{human_bytes(needs['final'])} at the end; "
              f"free at {existing_ancestor(root)}: {human_bytes(free)}"]
    lines += [f"note: {note}" for note in spec.notes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ unpacking
def _inside(folder: str, member: str) -> str:
    """Where ``member`` lands under ``folder``; a path leaving it (absolute, ``..``) is an error."""
    folder = os.path.abspath(folder)
    target = os.path.abspath(os.path.join(folder, member))
    if os.path.isabs(member) or os.path.commonpath([target, folder]) != folder:
        raise DatasetError(f"archive member {member!r} would be written outside {folder}; the archive is "
                           "corrupt or not the published one: delete it and run again")
    return target


def unpack_zip(path: str, folder: str, members: tuple[str, ...] | None, progress: bool) -> list[str]:
    """Files already there with the right size are kept (resume)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{path} is not a readable zip archive ({error}); delete it and run again"
                           ) from error
    with archive:
        infos = [i for i in archive.infolist()
                 if not i.is_dir() and (members is None or i.filename in members)]
        if members is not None:
            missing = sorted(set(members) - {i.filename for i in infos})
            if missing:
                raise DatasetError(f"{path} lacks {missing}; it is not the published archive: delete it and "
                                   "run again")
        with progress_bar(sum(i.file_size for i in infos), f"unpacking {os.path.basename(path)}",
                          progress) as bar:
            for info in infos:
                target = _inside(folder, info.filename)
                if not (os.path.isfile(target) and os.path.getsize(target) == info.file_size):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with archive.open(info) as source, open(target + ".unpacking", "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                    os.replace(target + ".unpacking", target)  # a killed run never leaves a short file
                bar.update(info.file_size)
    return [i.filename for i in infos]


def unpack_tar(path: str, folder: str, members: tuple[str, ...] | None, progress: bool) -> list[str]:
    """One streaming pass with tarfile's 'data' filter; files already there with the right size are kept."""
    names = []
    desc = f"unpacking {os.path.basename(path)}"
    with open(path, "rb") as handle, progress_bar(os.path.getsize(path), desc, progress) as bar:
        try:  # the bar counts the compressed bytes read
            with tarfile.open(fileobj=CallbackIOWrapper(bar.update, handle, "read"), mode="r|*") as archive:
                for member in archive:
                    if members is not None and member.name not in members:
                        continue
                    target = _inside(folder, member.name)
                    if member.isfile():
                        names.append(member.name)
                        if os.path.isfile(target) and os.path.getsize(target) == member.size:
                            continue
                    archive.extract(member, folder, filter="data")
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:  # not disk errors
            raise DatasetError(f"{path} is not a readable tar archive ({error}); delete it and run again"
                               ) from error
    return names


def write_stamp(step: Step, members: list[str]) -> None:
    os.makedirs(os.path.dirname(step.stamp), exist_ok=True)
    top = sorted({m.split("/", 1)[0] for m in members if "/" in m})
    record = {"file": step.remote.name, "url": step.url, "kind": step.remote.kind, "files": len(members),
              "top_folders": top[:50], "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(step.stamp + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    os.replace(step.stamp + ".tmp", step.stamp)


def check_complete_csv(path: str) -> None:
    """A downloaded CSV ends in a complete row: a newline and as many fields as its header."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.readline()
        handle.seek(max(0, size - (1 << 16)))
        last = handle.read().splitlines(keepends=True)[-1:] or [b""]
    fields = [len(next(csv.reader([line.decode("utf-8-sig", "replace")]), [])) for line in (header, last[0])]
    ended = last[0].endswith(b"\n")
    if not ended or fields[0] != fields[1]:
        raise DatasetError(f"{path} is incomplete: it does not end in a complete row ({fields[1]} of "
                           f"{fields[0]} fields{'' if ended else ', no final newline'}), as an interrupted "
                           "download leaves it; delete it and run the same command again")


# ------------------------------------------------------------------------------------------ layouts
def sample_filepaths(data_csv: str, per_split: int = SAMPLES_PER_SPLIT) -> dict[str, list[str]]:
    samples: dict[str, list[str]] = {}
    try:
        with pd.read_csv(data_csv, usecols=["filepath", "split_name"], dtype=str, keep_default_na=False,
                         chunksize=500_000) as chunks:
            for chunk in chunks:
                for split, group in chunk.groupby("split_name", sort=False):
                    taken = samples.setdefault(split, [])
                    taken.extend(group["filepath"].head(per_split - len(taken)).tolist())
    except ValueError as error:
        raise DatasetError(f"{data_csv}: cannot be read as the processed release's data.csv ({error}); "
                           "delete it and run again") from error
    if not samples:
        raise DatasetError(f"{data_csv} lists no images; delete it and run again")
    return samples


def find_image_root(root: str, samples: dict[str, list[str]]) -> str:
    """The image root (``--data``): the folder under which the most of data.csv's sampled filepaths exist,
    among ``root`` and its subfolders (the archives' top folders); the first (shallowest) of equal counts
    wins, so the layout inside the authors' archives need not be known in advance."""
    every = [path for paths in samples.values() for path in paths]
    absolute = [p for p in every if os.path.isabs(p)]
    if absolute:
        raise DatasetError(f"data.csv lists absolute filepaths (e.g. {absolute[0]!r}); the reader joins them "
                           "to --data: rewrite them relative to the image folder")
    skip = (STATE_DIR, "downloads")
    candidates = [root, *sorted(e.path for e in os.scandir(root) if e.is_dir() and e.name not in skip)]
    scores = []
    for folder in candidates:
        found = {split: sum(os.path.isfile(os.path.join(folder, p)) for p in paths)
                 for split, paths in samples.items()}
        scores.append((sum(found.values()), folder, found))
    total, folder, found = max(scores, key=lambda item: item[0])  # the first (shallowest) of equal scores
    if total == 0:
        raise DatasetError(f"none of the sampled images of data.csv (e.g. {every[0]!r}) exists under "
                           f"{root} or its subfolders {[s[1] for s in scores][:6]}; the archives hold "
                           "another layout: move the images so that <folder>/<filepath> exists and pass "
                           "that folder as --data")
    short = {split: f"{n}/{len(samples[split])}" for split, n in found.items() if n < len(samples[split])}
    if short:
        warnings.warn(f"some sampled images of data.csv are missing under {folder} ({short} found per "
                      "split); train.py --skip_bad_images drops missing images", stacklevel=2)
    return folder


def finish_layout(name: str, spec: DatasetSpec, root: str) -> dict:
    """``{'data', 'metadata'}`` (train.py's flags) of a prepared ROOT, after checking ``spec.layout``."""
    missing = [p for p in spec.layout if not os.path.exists(os.path.join(root, p))]
    if missing:
        raise DatasetError(f"{name}: after preparing, {missing} are missing under {root}; the archives "
                           f"do not hold the expected layout. Delete {STATE_DIR}/ under the root and run "
                           "again, or lay the files out by hand (docs/datasets.md)")
    data = root
    if spec.dataset_type == "openimages":  # data.csv's filepaths are relative to a folder of the archives
        data = find_image_root(root, sample_filepaths(os.path.join(root, "data.csv")))
    return {"data": data, "metadata": None if spec.metadata is None else os.path.normpath(
        os.path.join(root, spec.metadata))}


def train_commands(spec: DatasetSpec, layout: dict) -> tuple[list[str], list[str]]:
    """train.py arguments of the paper's two stages (stage 1 Ignore writes the prior stage 2 reads)."""
    data = ["--data", layout["data"]]
    if layout["metadata"]:
        data += ["--metadata", layout["metadata"]]
    common = [*data, "--dataset_type", spec.dataset_type, "--num-classes", str(spec.num_classes),
              "--image-size", str(spec.image_size), "--model-path", "models_local/tresnet_m_miil_21k.pth"]
    simulate = ["--simulate_partial_type", "fpc", "--simulate_partial_param", "1000"] if spec.simulate else []
    prior = "prior_fpc_1000.csv" if spec.simulate else "prior.csv"
    stage1 = [*common, *simulate, "--partial_loss_mode", "ignore", "--gamma_pos", "0", "--gamma_neg", "0",
              "--gamma_unann", "0", "--path_dest", "outputs/stage1"]
    stage2 = [*common, *simulate, "--partial_loss_mode", "selective", "--gamma_pos", "0", "--gamma_neg", "3",
              "--gamma_unann", "4", "--likelihood_topk", "5", "--prior_threshold", "0.5",
              "--prior_path", f"outputs/stage1/priors/{prior}", "--path_dest", "outputs/stage2"]
    return stage1, stage2


# ------------------------------------------------------------------------------------------ command
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.data.prepare", formatter_class=HelpFormatter,
                                     description="Download a dataset of the CSL paper and lay it out for "
                                                 "train.py (resumable; see docs/datasets.md).")
    data, download = parser.add_argument_group("data"), parser.add_argument_group("download")
    data.add_argument("dataset", choices=sorted(DATASETS), help="which dataset")
    data.add_argument("--root", required=True, help="folder the dataset is laid out in (created)")
    data.add_argument("--downloads", default=None,
                        help="folder for the archives while they download (default: ROOT/downloads)")
    download.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="list the files, URLs and disk needs; download and write nothing")
    download.add_argument("--base_url", "--base-url", default=None,
                        help=f"fetch every file as BASE_URL/<file name> (a mirror, file:// URL or folder); "
                             f"default: ${BASE_URL_ENV}, else the publishers' URLs")
    download.add_argument("--url", action="append", default=[], metavar="NAME=URL",
                        help="the URL of one file (repeatable), e.g. --url train2014.zip=file:///m/t.zip")
    download.add_argument("--keep_archives", "--keep-archives", action="store_true",
                        help="keep the archives after unpacking (default: deleted once unpacked)")
    download.add_argument("--skip_checksum", "--skip-checksum", action="store_true",
                        help="do not check the publisher's sizes and checksums (a file changed upstream)")
    download.add_argument("--no_space_check", "--no-space-check", action="store_true",
                        help="start even when the free disk space looks too small")
    download.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bars")
    download.add_argument("--retries", type=int, default=3, help="network retries per file")
    return parser


def check_writable(flag: str, path: str) -> None:
    """``path`` is, or can be made, a folder this process writes in (its nearest existing ancestor is a
    writable folder)."""
    where = existing_ancestor(path)
    if not os.path.isdir(where):
        raise ConfigError(f"{flag} {path!r}: {where!r} is a file, not a folder; pass a folder (it is created "
                          "when missing)")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as error:
        raise ConfigError(f"{flag} {path!r}: cannot write in {where!r} ({error.strerror or error}); choose a "
                          "writable folder (not on a read-only disk, with write permission)") from None


def check_space(root: str, needs: dict, dry_run: bool = False) -> None:
    """Too little free space is an error for exact sizes (a warning for estimates or in a dry run)."""
    where = existing_ancestor(root)
    free = shutil.disk_usage(where).free
    if free >= needs["peak"]:
        return
    message = (f"--root {root}: the download needs about {human_bytes(needs['peak'])} of disk at its peak "
               f"but {where} has {human_bytes(free)} free; free some space, choose another --root (or put "
               "--downloads on another disk), or pass --no_space_check")
    if needs["exact"] and not dry_run:
        raise ConfigError(message)
    warnings.warn(f"{message}{'' if needs['exact'] else ' (the sizes are estimates)'}", stacklevel=2)


def main(argv=None) -> dict:
    """Returns ``{'dataset', 'root', 'data', 'metadata', 'train_argv', 'stage2_argv', 'steps'}`` (a dry
    run: ``{'dry_run': True, 'steps', 'needs'}``)."""
    args = build_parser().parse_args(argv)
    spec = DATASETS[args.dataset]
    root = os.path.abspath(args.root)
    downloads = os.path.abspath(args.downloads or os.path.join(root, "downloads"))
    check_writable("--root", root)
    check_writable("--downloads", downloads)
    base_url = args.base_url or os.environ.get(BASE_URL_ENV) or None
    base_url = as_url(base_url) if base_url else None
    steps = build_plan(spec, root, downloads, base_url, parse_url_overrides(args.url, spec))
    needs = disk_needs(steps, args.keep_archives)
    print(describe_plan(args.dataset, spec, root, steps, needs))
    if not args.no_space_check:
        check_space(root, needs, args.dry_run)
    if args.dry_run:
        print("\ndry run: nothing was downloaded or written")
        return {"dry_run": True, "steps": steps, "needs": needs}
    lock_folder(root, "--root")  # one writer; creates the root
    progress = not args.no_progress
    for number, step in enumerate(steps, 1):
        remote = step.remote
        prefix = f"[{number}/{len(steps)}] {remote.name}"
        if step.done:
            print(f"{prefix}: already done ({os.path.relpath(step.stamp, root)})")
        else:
            exact = remote.exact and not args.skip_checksum
            result = download(step.url, step.local, size=remote.size if exact else None,
                              checksum=None if args.skip_checksum else remote.checksum, progress=progress,
                              retries=args.retries, log=lambda text, p=prefix: print(f"{p}: {text}"),
                              hint="--base_url / --url set the URL, --skip_checksum accepts a changed file",
                              confirm_size=True)
            if remote.name.endswith(".csv"):
                check_complete_csv(step.local)
            how = "already there" if result.skipped else f"{human_bytes(result.fetched_bytes)} fetched"
            if result.resumed_from:
                how += f", continued at {human_bytes(result.resumed_from)}"
            print(f"{prefix}: downloaded ({human_bytes(result.size)}, {how})")
            members = []
            if remote.kind != "file":
                folder = os.path.join(root, remote.unpack_to)
                unpack = unpack_zip if remote.kind == "zip" else unpack_tar
                members = unpack(step.local, folder, remote.members, progress)
                print(f"{prefix}: unpacked {len(members)} files into {folder}")
            write_stamp(step, members)
            if remote.kind != "file" and not args.keep_archives:
                os.remove(step.local)
    if not args.keep_archives and os.path.isdir(downloads) and not os.listdir(downloads):
        os.rmdir(downloads)
    unlock_folder(root)
    layout = finish_layout(args.dataset, spec, root)
    stage1, stage2 = train_commands(spec, layout)
    print(f"\n{args.dataset} is ready in {root}.")
    print("Train, stage 1 (Ignore mode; writes the class prior):")
    print("  " + shlex.join(["python", "train.py", *stage1]))
    print("stage 2 (CSL, selective mode with that prior):")
    print("  " + shlex.join(["python", "train.py", *stage2]))
    print("(put the ImageNet-21k TResNet-M weights at models_local/tresnet_m_miil_21k.pth, see "
          "models_local/README.md, or pass --model-path none)")
    return {"dataset": args.dataset, "root": root, "data": layout["data"], "metadata": layout["metadata"],
            "train_argv": stage1, "stage2_argv": stage2, "steps": steps}


def cli(argv=None) -> int:
    return run_cli(main, argv, prog="prepare")


if __name__ == "__main__":
    sys.exit(cli())
