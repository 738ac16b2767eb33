"""Atomic file writes: a reader never sees a half-written file under the final name.

Files get the mode any other program would give them (0o666 less the umask), so
checkpoints, reports and datasets stay readable by whoever may read the user's files.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

_NEW_FILE_MODE = 0o666  # what open() asks for; the kernel takes the umask off


def _create_temporary(folder: Path, name: str) -> tuple[int, Path]:
    """A new, uniquely named file next to `name`, opened for writing.

    Not tempfile.mkstemp: it creates mode 0600 whatever the umask. Creating the file with
    O_CREAT | O_EXCL and mode 0o666 lets the kernel apply the umask (and any default ACL)
    itself, so the umask is never read, which would need os.umask(0) and back, a window
    in which another thread's files would be created world-writable.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        temporary = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(temporary, flags, _NEW_FILE_MODE), temporary
        except FileExistsError:  # a name clash: draw another, as mkstemp does
            continue


@contextlib.contextmanager
def _atomic_stream(path: Path) -> Iterator[BinaryIO]:
    """A stream to write `path` through; the file appears under its name once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_temporary(path.parent, path.name)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with _atomic_stream(path) as stream:
        stream.write(data)
    return path


@contextlib.contextmanager
def atomic_npz(path: str | os.PathLike) -> Iterator[Callable[[str, np.ndarray], None]]:
    """`add(name, array)` writes one array into a compressed .npz (np.load reads it as one
    of np.savez_compressed), so memory holds one array at a time, not all of them."""
    with _atomic_stream(Path(path)) as stream, zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        def add(name: str, array: np.ndarray) -> None:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        yield add


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=False) + "\n")
