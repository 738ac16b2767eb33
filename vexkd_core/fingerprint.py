"""Fingerprints of what a result was made from, so it is reused only while its inputs stay the same.

The stages of the experiment runner and of the demo (vexkd_train/stages.py) record them in
each stage's spec and redo the stage's outputs when they change:

- `digest(*values)`: a short sha256 of JSON values (configs, seeds, arguments, other fingerprints);
- `code_digest(*paths)`: of the Python source under folders (or of single files);
- `file_stamp(path)`: of an input file such as a checkpoint (or of the files under a folder);
- `dataset_identity(dataroot, version)`: of a dataset in the nuScenes schema as it is on disk.

A ledger of finished runs kept in the repository (vexkd_train/ledger.py) must recognise its inputs on
another machine, where every file is new: `content_stamp` and `dataset_contents` know them by their
contents alone.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Files up to this size are hashed whole; larger ones are known by (size, mtime_ns).
# Why: a synthetic world's tables are a few MB and hashing them costs milliseconds. Real
# nuScenes' sample_data.json alone is ~300 MB (sample_annotation and ego_pose about as much):
# reading those at every reuse check would cost seconds each time. Rewriting a file gives it a
# new mtime_ns, so a rewrite is still seen; the price is that a large table merely touched, or
# copied without its mtime, redoes what read it.
WHOLE_HASH_LIMIT = 16 * 2**20


def digest(*values) -> str:
    """Short sha256 of JSON values; Paths and other objects by their str()."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_digest(*paths: Path) -> str:
    """Of the .py files under each folder (a file: its own bytes), by relative name and contents."""
    hasher = hashlib.sha256()
    for root in paths:
        files = sorted(root.glob("**/*.py")) if root.is_dir() else [root]
        for path in files:
            hasher.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes())
    return hasher.hexdigest()[:16]


def file_stamp(path: Path, root: Path | None = None) -> list:
    """Path (relative to `root` when given), size and mtime_ns of a file, or of each file under
    a folder; `missing` when absent.

    Why not a content digest: checkpoints of the paper configuration are large and are checked
    at every reuse decision, and retraining one always rewrites it (new mtime_ns)."""
    path = Path(path)
    name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    if path.is_dir():
        return [name, [[str(p.relative_to(path)), *_size_and_time(p)] for p in sorted(path.rglob("*"))
                       if p.is_file()]]
    return [name, *_size_and_time(path)] if path.is_file() else [name, "missing"]


def content_stamp(path: Path, root: Path | None = None) -> list:
    """Name (relative to `root` when under it, else the file's own name) and sha256 of a file:
    the same on any machine that made the same bytes, as seeded training does here."""
    path = Path(path)
    name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name
    return [name, "sha256", _sha256(path)]


def _size_and_time(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def dataset_identity(dataroot: str | os.PathLike, version: str) -> str:
    """Cheap digest of a nuScenes-schema dataset on disk that changes when it is rewritten.

    Covers the version folder's tables, the map expansion files and any JSON file at the top of
    the dataroot (the synthetic writer's marker, with its write id, where there is one): each
    by name, size and contents (by mtime_ns above WHOLE_HASH_LIMIT). The sensor files themselves
    are not read (real nuScenes has over a million); the mtime_ns of each sensor channel's folder
    stands for them, which changes when files are created in it or the folder is recreated, as
    every `vexkd-data synth` does. An in-place overwrite of a sensor file that keeps every table
    as it was is not seen."""
    dataroot = Path(dataroot)
    entries: list[list] = [[version]]
    for path in _identity_files(dataroot, version):
        entries.append([str(path.relative_to(dataroot)), *_file_identity(path)])
    for folder in _sensor_folders(dataroot):
        entries.append([str(folder.relative_to(dataroot)), "folder", folder.stat().st_mtime_ns])
    return digest(entries)


def dataset_contents(dataroot: str | os.PathLike, version: str) -> str:
    """Digest of a dataset by its contents alone, whatever its files' mtimes: a synthetic world
    written again with the same settings gives the same digest. Its tables and map files always;
    for a synthetic world also the writer's settings (less its folder and worker count) and every
    sensor file, since a change to a renderer rewrites those and no table. A real nuScenes release
    is known by its tables (its million sensor files are not read). Slow (a synthetic world's
    every file is read: seconds for a few GB), so taken only for a ledger."""
    from vexkd_core.data.synthetic.writer import MARKER

    dataroot = Path(dataroot)
    entries: list[list] = [[version]]
    for path in _identity_files(dataroot, version, with_marker=False):
        entries.append([str(path.relative_to(dataroot)), _sha256(path)])
    marker = dataroot / MARKER
    if marker.is_file():
        settings = json.loads(marker.read_text()).get("config", {})
        entries.append(["writer settings", {key: value for key, value in settings.items()
                                            if key not in ("out", "workers")}])
        entries += [[str(path.relative_to(dataroot)), _sha256(path)] for folder in _sensor_folders(dataroot)
                    for path in sorted(folder.rglob("*")) if path.is_file()]
    return digest(entries)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _identity_files(dataroot: Path, version: str, with_marker: bool = True) -> list[Path]:
    patterns = ((dataroot / version, "*.json"), (dataroot / "maps" / "expansion", "*.json"),
                *([(dataroot, "*.json")] if with_marker else []))
    return [path for folder, pattern in patterns for path in sorted(folder.glob(pattern)) if path.is_file()]


def _file_identity(path: Path) -> list:
    size, mtime_ns = _size_and_time(path)
    if size > WHOLE_HASH_LIMIT:
        return [size, "mtime_ns", mtime_ns]
    return [size, "sha256", _sha256(path)]


def _sensor_folders(dataroot: Path) -> list[Path]:
    return [channel for kind in ("samples", "sweeps") if (dataroot / kind).is_dir()
            for channel in sorted((dataroot / kind).iterdir()) if channel.is_dir()]
