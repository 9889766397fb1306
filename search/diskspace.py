"""Free disk space for a search: checked before it starts and watched while it runs (issue 22).

A search writes into three folders: its storage (Tune's state, the trials' checkpoints, the
spool of what MLflow has not taken), the folder of a SQLite MLflow store, and the spool's folder
when that is not the storage. A disk that fills mid-write leaves half a JSON state, a truncated
pickle, a SQLite "database or disk is full"; so a search stops before that, cleanly, once one of
them has less free than it needs: as on Ctrl-C, Tune saves its state and the trials continue from
their last checkpoints on ``--resume``. What a folder needs: `MIN_FREE_MB`
(``$AWDSEARCH_MIN_FREE_MB`` changes it), plus, in the storage, room for each running trial's next
checkpoints, and in the store's folder for the winner's model. Ray-free and torch-free.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from search.errors import SearchError
from search.storage import is_uri, nearest_existing
from search.uris import sqlite_path

log = logging.getLogger(__name__)

MIN_FREE_MB = 64  # every folder a search writes to keeps at least this much free
CHECK_EVERY_S = 5.0
BYTES_PER_PARAM = 4 * 4  # float32 weights, their average (ASGD), the best ones, Tune's copy
MB = 1 << 20


class NoSpaceError(SearchError):
    """A folder of the search has less free space than the search needs."""


@dataclass(frozen=True)
class Folder:
    """A folder the search writes to, and the free space it must keep there."""

    what: str  # "the search's storage", ...
    path: Path
    need: int  # bytes


@dataclass(frozen=True)
class Shortage:
    folder: Folder
    free: int

    def message(self) -> str:
        f = self.folder
        return (f"no space left for the search: {f.what} {f.path} has {_mb(self.free)} free, "
                f"it needs at least {_mb(f.need)} there (of which {_mb(min_free_bytes())} kept "
                "free on every folder: AWDSEARCH_MIN_FREE_MB)")


def _mb(n: int) -> str:
    return f"{n / MB:.0f} MB" if n >= 10 * MB else f"{n / MB:.1f} MB"


SQLITE_FULL = "database or disk is full"  # SQLite's words for ENOSPC, through SQLAlchemy/MLflow


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a write that found its disk full: ``ENOSPC``,
    or a SQLite store's "database or disk is full" wrapped by SQLAlchemy and MLflow."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)[:2000]
        if SQLITE_FULL in text or "No space left on device" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def enospc_message(error: BaseException, wanted: list[Folder]) -> str:
    """What a write that found its disk full (``ENOSPC``) tells: the folder now short of space
    if one is (`Shortage.message`), else the file that could not be written."""
    try:
        short = shortage(wanted)
    except OSError:
        short = None
    if short is not None:
        return short.message()
    filename = getattr(error, "filename", None)
    where = f" of {filename}" if filename else ""
    return f"no space left for the search: a write{where} found its disk full"


def min_free_bytes() -> int:
    raw = os.environ.get("AWDSEARCH_MIN_FREE_MB", "")
    if not raw:
        return MIN_FREE_MB * MB
    try:
        value = float(raw)
    except ValueError:
        raise SearchError(f"AWDSEARCH_MIN_FREE_MB={raw[:40]!r}: not a number of MB") from None
    if not 0 <= value < 1 << 30:
        raise SearchError(f"AWDSEARCH_MIN_FREE_MB={raw[:40]!r}: must be between 0 and 2^30 MB")
    return int(value * MB)


def folders(experiment_dir: str, tracking_uri: str, spool_dir: Path, params: int | None,
            concurrency: int, study_storage: str | None = None) -> list[Folder]:
    """The local folders a search writes to and what each needs; a folder at a URI (object
    store, tracking server) is the remote side's business and is not watched here. Folders on
    one file system are merged, their needs added."""
    base = min_free_bytes()
    model = (params or 0) * BYTES_PER_PARAM
    wanted: list[Folder] = []
    if not is_uri(experiment_dir):
        wanted.append(Folder("the search's storage", Path(experiment_dir),
                             base + model * max(concurrency, 1)))
    store = sqlite_path(tracking_uri)
    if store is not None:
        wanted.append(Folder("the MLflow store's folder", store.parent, base + model))
    study = sqlite_path(study_storage) if study_storage else None
    if study is not None:
        wanted.append(Folder("the Optuna study's folder", study.parent, base))
    if not any(_within(spool_dir, f.path) for f in wanted):
        wanted.append(Folder("the spool's folder", spool_dir, base))
    merged: dict[int, Folder] = {}
    for f in wanted:
        device = nearest_existing(f.path.resolve()).stat().st_dev
        if device in merged:
            first = merged[device]
            merged[device] = Folder(first.what, first.path, first.need + f.need - base)
        else:
            merged[device] = f
    return list(merged.values())


def _within(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(nearest_existing(path.resolve())).free  # a new storage: its parent


def shortage(wanted: list[Folder]) -> Shortage | None:
    """The first folder with less free space than it needs, if any."""
    for f in wanted:
        free = free_bytes(f.path)
        if free < f.need:
            return Shortage(f, free)
    return None


def check(wanted: list[Folder]) -> None:
    """Before a search starts (or resumes): enough space everywhere, or one line saying where
    it is missing."""
    short = shortage(wanted)
    if short is not None:
        raise NoSpaceError(short.message())


class DiskWatch:
    """While a search runs: a thread that looks at the folders every `CHECK_EVERY_S` seconds
    and, the first time one is short, stops the search the way Ctrl-C does (a SIGINT to this
    process, which Tune catches: it saves its state and ends its trials, to be continued by
    ``--resume``). A write of the driver's that found its disk full first stops it the same way
    (`trip_on`). `reason` then says why it stopped."""

    def __init__(self, wanted: list[Folder], every: float = CHECK_EVERY_S) -> None:
        self.wanted = wanted
        self.every = every
        self.reason: str | None = None
        # the SIGINT handler before Tune's: while it is in place (Tune not running yet, or
        # already stopping), a SIGINT would not be Tune's to catch, so none is sent
        self._before = signal.getsignal(signal.SIGINT)
        self._done = threading.Event()
        self._lock = threading.Lock()  # a stop is sent while the search runs, never after

    def trip(self, reason: str) -> None:
        """Stop the search, once, for ``reason``."""
        with self._lock:
            if self._done.is_set() or self.reason is not None:
                return
            if signal.getsignal(signal.SIGINT) is self._before:
                log.debug("free space short, Tune not catching SIGINT: %s", reason)
                return
            self.reason = reason
            log.error("%s; stopping the search (its state is saved, --resume continues it once "
                      "there is space)", reason)
            os.kill(os.getpid(), signal.SIGINT)

    def _run(self) -> None:
        while not self._done.wait(self.every) and self.reason is None:
            try:
                short = shortage(self.wanted)
            except OSError as e:  # a folder gone or unreadable: Tune will say so itself
                log.debug("free space unknown: %s", e)
                continue
            if short is not None:
                self.trip(short.message())

    @contextmanager
    def watching(self) -> Iterator[DiskWatch]:
        global _ACTIVE
        thread = threading.Thread(target=self._run, name="disk-watch", daemon=True)
        _ACTIVE = self
        thread.start()
        try:
            yield self
        finally:
            with self._lock:
                self._done.set()
            _ACTIVE = None
            thread.join(timeout=2 * self.every)  # a disk that hangs (NFS) does not hang the end


_ACTIVE: DiskWatch | None = None  # the watch of the search this process runs, while it runs


def trip_on(error: BaseException) -> bool:
    """Whether ``error`` found a disk full while a watched search runs; if so the search is
    stopped for it (`DiskWatch.trip`) and the caller may go on without raising it."""
    watch = _ACTIVE
    if watch is None or not is_disk_full(error):
        return False
    watch.trip(enospc_message(error, watch.wanted))
    return True
