"""What a run is (`run_settings`: flags, processes, the content hash of each file a flag names, the data's
generator config; its identity: their hash), recorded beside what it made. A product of other or
unrecorded settings is refused with the change named, or with ``--overwrite`` deleted and made anew."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from src.utils.io import atomic_write_json


def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_settings(flags: dict, nproc_per_node: int, data_config: dict | None) -> dict:
    """``--path_dest``, where the run is written, is not part of what it is."""
    passed = {name: value if value is True else str(value) for name, value in flags.items()
              if value is not None and value is not False and name != "path_dest"}
    files = {name: file_hash(value) for name, value in passed.items()
             if isinstance(value, str) and os.path.isfile(value)}
    return {"flags": passed, "nproc_per_node": nproc_per_node, "file_hashes": files, "data": data_config}


def settings_identity(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _flat(settings: dict) -> dict:
    flat = {f"--{name}": value for name, value in settings["flags"].items()}
    flat.update({f"the content of --{name}": digest[:12] for name, digest in settings["file_hashes"].items()})
    flat.update({f"the dataset's {key}": value for key, value in (settings["data"] or {}).items()})
    return {**flat, "--nproc_per_node": settings["nproc_per_node"]}


def changed_settings(recorded: dict | None, wanted: dict) -> str:
    if recorded is None:
        return "its settings are not recorded (made by an older reproduce.py), so they are unknown"
    old, new = _flat(recorded), _flat(wanted)
    return "; ".join(f"{key} {old.get(key, 'unset')} -> {new.get(key, 'unset')}"
                     for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key))


def reusable(product: str, record: str, settings: dict, overwrite: bool, remove: str) -> bool:
    """True when ``product`` exists and ``record`` holds ``settings``' identity; else ``record`` is written
    for the run about to make it and False returned (a product of other settings is refused, or with
    ``overwrite`` its file or folder ``remove`` is deleted first)."""
    identity = settings_identity(settings)
    recorded = None
    if os.path.exists(record):
        with open(record) as handle:
            recorded = json.load(handle)
    if os.path.exists(product):
        if recorded is not None and recorded.get("identity") == identity:
            return True
        change = changed_settings(recorded and recorded["settings"], settings)
        if not overwrite:
            raise ValueError(f"{remove} holds a finished result that this run's settings do not match "
                             f"({change}); it is not reused. Pass another --out to keep it, or --overwrite "
                             "to delete it and run it anew")
        print(f"--overwrite: deleting {remove} ({change})", flush=True)
        shutil.rmtree(remove) if os.path.isdir(remove) else os.remove(remove)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    atomic_write_json(record, {"identity": identity, "settings": settings})
    return False
