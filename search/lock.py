"""One driver per search: an exclusive lock on the experiment folder while a driver runs it.

Two drivers on one search log every epoch twice and fight over each trial's MLflow run, so the
second one is refused. The lock is the kernel's (``flock`` on a file in the experiment folder):
it dies with its process, so a driver killed with SIGKILL leaves no stale lock behind. The file
also names the holder (host, pid, start time) for the error message, and a file whose holder is
gone is simply taken over. Searches in an object store (``s3://...``) have no file to lock: the
lock is then taken in the local user cache folder, which protects against a second driver on
the same machine only.

`creation_lock` serialises the opening of a SQLite store (MLflow's, Optuna's) across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import platformdirs

from search import storage
from search.errors import SearchError

LOCK_FILE = "driver.lock"
CREATION_WAIT_S = 300.0  # how long a command waits for another to finish creating a store


def lock_path(experiment_dir: str) -> Path:
    """The lock file of a search: in its folder, or in the cache for an object-store search."""
    if not storage.is_uri(experiment_dir):
        return Path(experiment_dir) / LOCK_FILE
    key = hashlib.sha256(experiment_dir.encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("awdsearch")) / "locks" / f"{key}.lock"


class SearchInUse(SearchError):
    """Another driver is running this search."""


class DriverLock:
    """Held by the driver from the first write to its search until it exits."""

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = experiment_dir
        self.path = lock_path(experiment_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise SearchInUse(
                f"another driver is running the search at {self.experiment_dir} ({holder}); "
                "wait for it to end, or stop it first (Ctrl-C), then --resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


@contextmanager
def creation_lock(database: Path, wait_s: float = CREATION_WAIT_S) -> Iterator[None]:
    """Held while a process opens (and so may create or upgrade) a SQLite store: MLflow's and
    Optuna's table creation is not safe against a second process doing the same, so two
    commands started together on a new ``mlflow.db`` or ``optuna.db`` take turns. The lock is
    ``<file>.lock`` beside the database (the kernel's ``flock``: it dies with its process)."""
    path = database.with_name(database.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SearchError(f"{database} has been locked by another command for "
                                      f"{wait_s:.0f} s (creating its tables?); try again") \
                        from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
