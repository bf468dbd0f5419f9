"""Atomic file writes (write to a temporary name in the same folder, then rename over the target: a kill at
any moment leaves either the old file or the new one, never half of one), output-folder checks made before
any long work, and the exclusive lock of a folder one writer at a time may fill.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vfmxai.errors import VfmxaiError

LOCK = ".vfmxai.lock"
"""The lock file `exclusive_folder` holds in the folder while a writer works there."""


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename tmp_path to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def _umask() -> int:
    """The process umask (reading it means setting it; set straight back). mkstemp makes files 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_out_folder(out: str | Path, option: str = "--out") -> Path:
    """`out` as a Path if a folder can be made or written there, else a one-line error naming `option`: `out` is
    an existing file, lies under a file, or its nearest existing folder is not writable. Makes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VfmxaiError(f"{option} {out}: exists and is not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise VfmxaiError(f"{option} {out}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == out else f" ({existing}, where it would be made)"
        raise VfmxaiError(f"{option} {out}: folder not writable{where}")
    return out


@contextlib.contextmanager
def exclusive_folder(folder: str | Path, option: str = "--out") -> Iterator[Path]:
    """Hold the exclusive lock `folder/LOCK` (flock, released when the process dies) while the block runs; a
    second writer is refused at once with one line. The folder is made if needed, and removed again on the way
    out when this made it and nothing else was written there."""
    folder = check_out_folder(folder, option)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VfmxaiError(
                f"{option} {folder}: another process is writing there (it holds {path}); wait for it to finish "
                "or choose another folder"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # else the holder removed the file between our open and our lock: take the new one
        os.close(fd)
    try:
        yield folder
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        if created and not any(folder.iterdir()):
            folder.rmdir()
