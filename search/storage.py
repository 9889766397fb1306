"""Small files of the search's own (its state, ASHA's rungs) next to Ray's results, wherever
those live: a local folder, NFS, or an object store URI such as ``s3://bucket/ray_results``.

Paths are plain strings, not `Path`s, so that a URI survives untouched; pyarrow's filesystems
(what Ray itself uses for storage) do the reading and writing.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_uri(location: str) -> bool:
    return "://" in location


def absolute(location: str) -> str:
    """A URI as it is; a local path made absolute (Ray wants absolute storage paths)."""
    return location if is_uri(location) else str(Path(location).expanduser().resolve())


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder to write in, created if missing (None: it can be): a
    regular file on its way, or a nearest existing folder that is not writable."""
    try:
        existing = nearest_existing(path)
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"folder {existing} is not writable"
    except (OSError, ValueError) as e:  # a name too long, an embedded NUL, ...
        return f"{path}: {getattr(e, 'strerror', None) or e}"
    return None


def file_problem(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (None: it can): not a folder, in a folder that
    exists already and is writable."""
    try:
        if path.is_dir():
            return f"{path} is a folder, not a file"
        parent = path.parent
        if not parent.is_dir():
            existing = nearest_existing(parent)
            if existing.exists() and not existing.is_dir():
                return f"{existing} is a file, not a folder"
            return f"folder {parent} does not exist"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"folder {parent} is not writable"
        if path.exists() and not os.access(path, os.W_OK):
            return f"{path} is not writable"
    except (OSError, ValueError) as e:
        return f"{path}: {getattr(e, 'strerror', None) or e}"
    return None


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def read_text(location: str) -> str | None:
    """The file's text, or None if it does not exist."""
    if not is_uri(location):
        path = Path(location)
        return path.read_text() if path.exists() else None
    from pyarrow import fs  # object stores only: a local search never loads pyarrow here

    filesystem, path = fs.FileSystem.from_uri(location)
    if filesystem.get_file_info(path).type == fs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(path) as f:
        return f.read().decode()


def write_text(location: str, text: str) -> None:
    """Write atomically: a local temp file renamed into place, or one object-store PUT."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(location)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(text.encode())


# --- Tune's saved state, checked before a restore --------------------------------------------
# Tune restores from the newest of each; one it cannot read makes it restart the experiment
# from zero under the same name (issue 22), so they are checked first, without running them.
TUNE_STATE_JSON = ("experiment_state-*.json",)
TUNER_FILE = "tuner.pkl"  # Tune's saved Tuner: a search Tune can restore has one
TUNE_STATE_PICKLES = (TUNER_FILE, "searcher-state-*.pkl", "search_gen_state-*.json")  # a pickle


def _newest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def pickle_problem(data: bytes) -> str | None:
    """Why ``data`` is not one whole pickle (None: it is), found by reading its opcodes with
    `pickletools`, which executes nothing: a truncated or garbled file fails here."""
    import pickletools

    try:
        ops = list(pickletools.genops(data))
    except Exception as e:  # ValueError for a truncated stream, others for garbage
        return f"not a whole pickle ({str(e).strip() or type(e).__name__})"
    if not ops or ops[-1][0].name != "STOP":
        return "not a whole pickle (no STOP opcode)"
    end = (ops[-1][2] or 0) + 1
    if data[end:].strip(b"\x00"):
        return f"{len(data) - end:,} bytes after the pickle's end"
    return None


def damaged_tune_state(experiment_dir: str) -> str | None:
    """Which of Tune's saved state files of a local search cannot be read, and why (None: all
    can, or the search lives at a URI, where Tune's own restore is left to check)."""
    import json

    from awd.errors import first_line

    if is_uri(experiment_dir):
        return None
    folder = Path(experiment_dir)
    for pattern in TUNE_STATE_JSON:
        path = _newest(folder, pattern)
        if path is None:
            continue
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as e:
            return f"{path.name} ({first_line(e)[:200]})"
    for pattern in TUNE_STATE_PICKLES:
        path = _newest(folder, pattern)
        if path is None:
            continue
        try:
            problem = pickle_problem(path.read_bytes())
        except OSError as e:
            problem = e.strerror or str(e)
        if problem:
            return f"{path.name} ({problem})"
    return None

