"""The Tune callback that signs a run's state files as Tune writes them (`search.trust`)."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from search.storage import is_uri
from search.trust import StateFolder, sign, state_files, state_key

EVERY_S = {False: 0.5, True: 10.0}  # between two looks at a local folder, at an object store


class StateSigner(Callback):
    """Signs the run's state files after each loop step where one changed, and at the end.
    Pickled into Tune's ``tuner.pkl`` with its folder only (never the key): a restored run
    goes on signing."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._seen: dict[str, tuple[int, int]] = {}
        self._key: bytes | None = None
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "_seen": {}, "_key": None, "_last": 0.0}

    def sign_changed(self, at_least_every: float = 0.0) -> None:
        """Sign what changed; at most once per ``at_least_every`` seconds (a listing of an
        object store costs requests: `EVERY_S`)."""
        if time.monotonic() - self._last < at_least_every:
            return
        self._last = time.monotonic()
        if self._key is None:
            self._key = state_key()
        names = StateFolder(self.location).names()
        now = {n: names[n] for n in state_files(names)}
        if now != self._seen:
            sign(self.location, self._key)
            self._seen = now

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.sign_changed(EVERY_S[is_uri(self.location)])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sign_changed()
