"""Files that are read back later are written whole or not at all.

A run killed mid-write (an OOM, a pre-empted node, Ctrl-C) must never leave a half-written
checkpoint or cache where a reader would pick it up: every writer here writes a temporary file
in the destination's own folder (same file system) and renames it over the destination with
``os.replace``, which is atomic. The previous version of the file stays valid until the rename.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``.

    OSError (missing folder, full disk, no permission) propagates; the temporary file is
    removed whatever happens."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large corpora do not fill memory."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through `atomic_write`."""
    import torch  # here: `check_writable_file` serves command lines that have not loaded torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def check_writable_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be written (None if it can): checked before a long run starts, so a
    typo in an output path fails at once instead of after the first epoch."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        return f"{target} is a folder"
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as e:
        return f"cannot write in {folder}: {e.strerror or e}"
    os.close(fd)
    os.unlink(tmp)
    return None
