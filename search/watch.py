"""``python -m search.watch EXPERIMENT``: follow a running search, one line per trial epoch.

It reads what the driver itself appends, Tune's ``result.json`` in each trial's folder of the
experiment (``--storage``, default ``./ray_results``), not the ``trial.log`` files Ray copies
there only now and then: every epoch of every trial, trials started later included, as soon as
the driver has it. A file Ray rewrites (shorter, or with epochs again) prints nothing twice.
It ends with the search (the driver's lock is free and nothing new came), or with Ctrl-C;
``--once`` prints what is there and exits. Standard library only: it starts in a blink.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

RESULT_FILE = "result.json"
LOCK_FILE = "driver.lock"  # `search.lock.LOCK_FILE`


def epoch_text(trial: str, row: dict[str, Any]) -> str:
    """One trial epoch in one line (the fields `awd.progress.epoch_line` prints)."""
    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "—"

    end = ""
    if row.get("finished"):
        end = f" | done: final val {num('final_val_ppl', '.2f')}, test " \
              f"{num('final_test_ppl', '.2f')}"
    return (f"{trial:<26} epoch {num('epoch', '3d')} | train ppl {num('train_ppl', '8.2f')} | "
            f"val ppl {num('val_ppl', '8.2f')} | best {num('best_val_ppl', '8.2f')} | "
            f"lr {num('lr', '.3g')} | {num('epoch_seconds', '.1f')}s{end}")


@dataclass
class Follower:
    """Where each trial's file was read up to, and which epochs were printed."""

    folder: Path
    offsets: dict[Path, int] = field(default_factory=dict)
    printed: set[tuple[str, int]] = field(default_factory=set)

    def poll(self) -> Iterator[str]:
        """The lines of the epochs that appeared since the last poll, trial by trial."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob(f"*/{RESULT_FILE}")):
            yield from self._read(path)

    def _read(self, path: Path) -> Iterator[str]:
        try:
            size = path.stat().st_size
            start = self.offsets.get(path, 0)
            if size < start:  # rewritten by a sync: read again, print only what is new
                start = 0
            with path.open("rb") as f:
                f.seek(start)
                data = f.read()
        except OSError:
            return
        complete = data[:data.rfind(b"\n") + 1]  # a line being written waits for its end
        self.offsets[path] = start + len(complete)
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            name = path.parent.name
            epoch = row.get("epoch")
            if not isinstance(epoch, int) or (name, epoch) in self.printed:
                continue
            self.printed.add((name, epoch))
            yield epoch_text(name, row)


def driver_running(folder: Path) -> bool:
    """Whether a driver holds the search's lock (`search.lock.DriverLock`)."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def watch(folder: Path, out: TextIO, interval: float = 1.0,
          stop: Callable[[], bool] | None = None) -> int:
    """Print new epochs every ``interval`` s until ``stop()`` (default: the search ended);
    returns the number of lines printed."""
    follower = Follower(folder)
    ended = stop or (lambda: not driver_running(folder))
    printed = 0
    while True:
        done = ended()  # before reading: the last epochs of an ending search are printed
        for line in follower.poll():
            print(line, file=out, flush=True)
            printed += 1
        if done:
            return printed
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.watch",
                                description="Follow a running search: one line per trial "
                                "epoch, trials started later included.")
    p.add_argument("experiment", help="the search's experiment name (default of a search: its "
                   "space's name)")
    p.add_argument("--storage", default="ray_results",
                   help="the search's --storage (default %(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reads")
    p.add_argument("--once", action="store_true", help="print what is there, then exit")
    args = p.parse_args(argv)
    folder = Path(args.storage).expanduser() / args.experiment
    if not folder.is_dir():
        print(f"error: no search at {folder} (pass --storage, or start the search first)",
              file=sys.stderr)
        return 2
    if not (args.interval > 0 and args.interval < 3600):
        print("error: --interval must be a number of seconds above 0", file=sys.stderr)
        return 2
    if not args.once and not driver_running(folder):
        print(f"(no driver is running the search at {folder}: printing what it left)",
              file=sys.stderr)
    try:
        watch(folder, sys.stdout, args.interval, (lambda: True) if args.once else None)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
