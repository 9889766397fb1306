"""A durable outbox: records handed over by a caller that must never wait (Tune's event loop)
are written in order, once each, by one background thread; while the store is away they are
kept in memory and in a spool file, so that neither an outage nor a killed process loses them.

Generic over what a record means: ``write(record)`` does the writing (and must be idempotent
for a record it may have half-written), ``is_transient(error)`` tells an outage (keep and
retry) from a rejection (log and drop that record).

The spool is a JSON-lines file: one line per record (``{"seq": N, ...}``), then one
``{"ack": N}`` line per record written, in order; it is deleted once everything is written.
A new outbox on the same file takes over the records an earlier process left there.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from awd.errors import first_line

log = logging.getLogger(__name__)

Record = dict[str, Any]  # JSON-serialisable; the outbox adds "seq"


class Spool:
    """Records not written yet, in order: a JSON-lines file mirrored by an in-memory window
    (the first ``memory`` records; the rest are read back from the file when their turn
    comes), so that memory stays bounded during a long outage."""

    def __init__(self, path: Path, memory: int = 1000) -> None:
        self.path = path
        self.memory = memory
        self._window: deque[Record] = deque()
        self._on_disk = 0  # pending records only in the file, after the window
        self._acked = 0  # records up to this seq are written
        self.last_seq = 0  # the highest seq ever put in the file
        self._file: IO[str] | None = None
        pending = list(self._pending_in_file())
        self.last_seq = max((r["seq"] for r in pending), default=self._acked)
        self._window.extend(pending[:memory])
        self._on_disk = len(pending) - len(self._window)

    def __len__(self) -> int:
        return len(self._window) + self._on_disk

    def _lines(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with self.path.open() as f:
            for line in f:
                try:
                    item = json.loads(line)
                except ValueError:  # a line cut short by a killed process
                    continue
                if isinstance(item, dict):
                    yield item

    def _pending_in_file(self) -> Iterator[Record]:
        items = list(self._lines())
        self._acked = max([self._acked, *(int(i["ack"]) for i in items if "ack" in i)])
        yield from (i for i in items if "seq" in i and int(i["seq"]) > self._acked)

    def _append_line(self, item: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a")
        self._file.write(json.dumps(item) + "\n")
        self._file.flush()  # in the OS's hands: survives the process being killed

    def append(self, record: Record) -> None:
        self._append_line(record)
        self.last_seq = max(self.last_seq, int(record["seq"]))
        if self._on_disk == 0 and len(self._window) < self.memory:
            self._window.append(record)
        else:
            self._on_disk += 1

    def peek(self) -> Record | None:
        if not self._window and self._on_disk:
            if self._file is not None:
                self._file.flush()
            loaded = [r for _, r in zip(range(self.memory), self._pending_in_file(),
                                        strict=False)]
            self._window.extend(loaded)
            self._on_disk -= len(loaded)
        return self._window[0] if self._window else None

    def ack(self, seq: int) -> None:
        """The head record is written; the file goes once nothing is left in it."""
        head = self.peek()
        assert head is not None and head["seq"] == seq, "records are written in order"
        self._window.popleft()
        self._acked = seq
        if len(self):
            self._append_line({"ack": seq})
        else:
            self.remove()

    def remove(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


@dataclass
class Outage:
    since: float  # time.time() when the first write failed (or stalled)
    written: int = 0  # records written since


class Outbox:
    """One writer thread over a bounded in-memory queue and a spool file.

    ``put`` never blocks on the store: while the store is reachable records go through the
    queue; once a write fails (or stalls longer than ``stall_s``), or the queue is full, every
    record goes to the spool until the spool is written out again. Order is kept across both:
    when spooling starts, the queue moves into the spool first."""

    def __init__(self, write: Callable[[Record], None], spool_path: Path, *, where: str,
                 is_transient: Callable[[BaseException], bool], capacity: int = 1000,
                 backoff: tuple[float, float] = (1.0, 30.0), stall_s: float = 15.0) -> None:
        self._write = write
        self._is_transient = is_transient
        self.where = where  # the store, for the log lines
        self.capacity = capacity
        self.backoff = backoff
        self.stall_s = stall_s
        self.spool = Spool(spool_path, memory=capacity)
        self._queue: deque[Record] = deque()
        self._spooling = len(self.spool) > 0  # an earlier process left records: those first
        self._seq = self.spool.last_seq
        self._cond = threading.Condition()
        self._retry_now = threading.Event()
        self._busy_since: float | None = None
        self._stop = False
        self.outage: Outage | None = None
        self.written = 0
        self.dropped = 0
        self._failures = 0  # writes that failed for the store's sake, ever
        self._thread = threading.Thread(target=self._run, name="mlflow-outbox", daemon=True)
        self._thread.start()

    # --- the caller's side ---------------------------------------------------------------
    def put(self, record: Record) -> None:
        with self._cond:
            self._seq += 1
            record = {**record, "seq": self._seq}
            stalled = (self._busy_since is not None
                       and time.monotonic() - self._busy_since > self.stall_s)
            if stalled and self.outage is None:
                self._start_outage(f"no answer for {self.stall_s:g} s")
            if not self._spooling and len(self._queue) >= self.capacity:
                self._spool_queue()
            if self._spooling:
                self.spool.append(record)
            else:
                self._queue.append(record)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self.spool)

    def drain(self, timeout: float, while_reachable: bool = False) -> bool:
        """Wait until every record is written (True) or ``timeout`` seconds pass (False); with
        ``while_reachable``, also give up (False) as soon as a write fails."""
        deadline = time.monotonic() + timeout
        self._retry_now.set()  # no waiting out a backoff: try the store now
        with self._cond:
            failures = self._failures
            while self._queue or len(self.spool):
                left = deadline - time.monotonic()
                if (left <= 0 or not self._thread.is_alive()
                        or (while_reachable and self._failures > failures)):
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def close(self, timeout: float = 0.0) -> bool:
        """Drain for up to ``timeout`` s, then stop the writer; what is left stays in the spool
        file for the next process. True when everything was written."""
        done = self.drain(timeout)
        with self._cond:
            self._stop = True
            if self._queue:
                self._spool_queue()
            self._cond.notify_all()
        self._retry_now.set()
        self._thread.join(timeout=5)
        return done

    # --- the writer thread -----------------------------------------------------------------
    def _spool_queue(self) -> None:
        """From now on records go to the spool (durable), the queued ones first (order)."""
        while self._queue:
            self.spool.append(self._queue.popleft())
        self._spooling = True

    def _start_outage(self, why: str) -> None:
        self.outage = Outage(time.time())
        self._spool_queue()
        log.debug("MLflow outage: %s", why)
        log.warning("MLflow at %s unreachable since %s; results are kept in %s and will be "
                    "written when it is back", self.where,
                    datetime.fromtimestamp(self.outage.since).strftime("%H:%M:%S"),
                    self.spool.path)

    def _next(self) -> Record | None:
        with self._cond:
            while not self._stop and not (self._queue or len(self.spool)):
                self._cond.wait()
            if self._stop:
                return None
            head = self.spool.peek() if self._spooling else self._queue[0]
            self._busy_since = time.monotonic()
            return head

    def _done(self, record: Record, written: bool) -> None:
        with self._cond:
            self._busy_since = None
            seq = record["seq"]
            if self._queue and self._queue[0]["seq"] == seq:
                self._queue.popleft()
            else:  # spooled meanwhile (or from the start)
                self.spool.ack(seq)
            self.written += written
            if self.outage is not None:
                self.outage.written += written
            if self._spooling and not len(self.spool):
                self._spooling = False
                if self.outage is not None:
                    log.warning("MLflow caught up: %d records written after an outage of %d s",
                                self.outage.written, round(time.time() - self.outage.since))
                    self.outage = None
            self._cond.notify_all()

    def _run(self) -> None:
        failures = 0
        while (record := self._next()) is not None:
            try:
                self._write(record)
            except Exception as e:  # the store decides what is an outage: never kill the thread
                if not self._is_transient(e):
                    log.warning("MLflow rejected a %s record of trial %s; left out: %s",
                                record.get("kind"), record.get("trial_id"), first_line(e))
                    self.dropped += 1
                    self._done(record, written=False)
                    continue
                with self._cond:
                    self._busy_since = None
                    self._failures += 1
                    self._cond.notify_all()
                    if self.outage is None:
                        self._start_outage(first_line(e)[:200])
                    self._spool_queue()
                failures += 1
                low, high = self.backoff
                self._retry_now.wait(min(high, low * 2 ** (failures - 1)))
                self._retry_now.clear()
                continue
            failures = 0
            self._done(record, written=True)
