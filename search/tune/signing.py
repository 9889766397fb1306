"""The Tune callback that signs a run's state files as this driver's Tune writes them
(`search.trust`).

It signs only what this driver's Tune session writes, never whatever happens to be in the
(shared) folder: ``tuner.pkl`` when it first sees it (Tune writes it as the run starts),
the files named with this session's timestamp (``experiment_state-<session>.json`` and the
searcher's), the first such timestamp at or after the driver's start being the session's, and
the ``error.pkl`` of trials that failed since. A state file changed by someone else is left
unsigned: the next resume puts it aside and uses its last signed copy. What remains open: a
writer who plants a file between Tune writing it and this callback's next look (half a second
on a local folder) gets it signed; a newer session-named file planted before Tune's first one
would be taken for the session's.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime
from typing import Any

from ray.tune import Callback

from awd.errors import first_line
from search.errors import SearchError
from search.storage import is_uri
from search.trust import StateFolder, sign, state_files, state_key

log = logging.getLogger(__name__)

EVERY_S = {False: 0.5, True: 10.0}  # between two looks at a local folder, at an object store
STAMP = re.compile(r"-(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})\.")  # Tune's session string
SLACK_S = 5.0  # Tune's session may start a little before the signer's clock


class StateSigner(Callback):
    """Signs this session's state files after each loop step where one changed, and at the
    end. Pickled into Tune's ``tuner.pkl`` with its folder only (never the key, never the
    session): a restored run signs its own new session."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._reset()

    def _reset(self) -> None:
        self._start = time.time()
        self._session: str | None = None
        self._tuner_signed = False
        self._seen: dict[str, tuple[int, int]] = {}
        self._key: bytes | None = None
        self._last = 0.0
        self._broken = False

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location = state["location"]
        self._reset()

    def ours(self, names: dict[str, tuple[int, int]]) -> list[str]:
        """The state files this session wrote (see the module docstring)."""
        start_ns = (self._start - SLACK_S) * 1e9
        out = []
        for name in state_files(names):
            if name == "tuner.pkl":
                if not self._tuner_signed and names[name][0] >= start_ns:
                    out.append(name)
                continue
            if name.endswith("/error.pkl"):
                if names[name][0] >= start_ns:
                    out.append(name)
                continue
            stamp = STAMP.search(name)
            if stamp is None or name.startswith("callback-states-"):
                continue
            if self._session is None and _seconds(stamp.group(1)) >= self._start - SLACK_S:
                self._session = stamp.group(1)
            if stamp.group(1) == self._session:
                out.append(name)
        return out

    def sign_changed(self, at_least_every: float = 0.0) -> None:
        """Sign what this session changed; at most once per ``at_least_every`` seconds (a
        listing of an object store costs requests: `EVERY_S`)."""
        if self._broken or time.monotonic() - self._last < at_least_every:
            return
        self._last = time.monotonic()
        try:
            if self._key is None:
                self._key = state_key()
            names = StateFolder(self.location).names()
            now = {n: names[n] for n in state_files(names)}
            if now == self._seen:
                return
            mine = self.ours(names)
            sign(self.location, self._key, names=mine)
            self._tuner_signed = self._tuner_signed or "tuner.pkl" in mine
            self._seen = now
        except (SearchError, OSError) as e:  # the run goes on; its resume will say why
            self._broken = True
            log.error("the search's state is no longer signed: %s", first_line(e))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.sign_changed(EVERY_S[is_uri(self.location)])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sign_changed()


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S").timestamp()
