"""The Tune callback that signs a run's state files as this driver's Tune writes them
(`search.trust`).

Tune writes its experiment and searcher state into a staging folder on the driver's own disk
(``/tmp/ray/session_*/artifacts/...``, this user's, never the shared storage) and uploads it to
the experiment folder from there, in the background. The signer signs the staging copies right
after Tune's step that saved them (`Callback.on_step_end` follows `TuneController.checkpoint`
in the same step), under their names in the experiment folder: what lands there is signed before
it lands, and a kill between the save and the upload leaves a signed copy of the newer state
(the one whose trial checkpoints exist). Besides: ``tuner.pkl`` when first seen (Tune writes it
into the experiment folder as the run starts) and the ``error.pkl`` of trials that failed since
this driver started. Nothing else in the (shared) folder is ever signed: a state file changed
there by someone else fails its check on the next resume, which uses its last signed copy.
What remains open: an ``error.pkl`` or ``tuner.pkl`` replaced between Tune writing it and the
signer's next look (half a second locally, 10 s at a URI).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune import Callback

from awd.errors import first_line
from search.diskspace import is_disk_full
from search.errors import SearchError
from search.storage import TUNER_FILE, is_uri
from search.trust import StateFolder, sign, state_files, state_key

log = logging.getLogger(__name__)

EVERY_S = {False: 0.5, True: 10.0}  # between two looks at a local folder, at an object store
SLACK_S = 5.0  # files written just before the signer was made still count as this session's
_STAGING: dict[str, str] = {}  # experiment folder -> Tune's staging folder, in this process


class StateSigner(Callback):
    """Signs this session's state files after each loop step where one changed, and at the
    end. Pickled into Tune's ``tuner.pkl`` with its folder only (never the key, never the
    staging folder): a restored run signs its own new session."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._reset()

    def _reset(self) -> None:
        self._start = time.time()
        self._tuner_signed = False
        self._staged: dict[str, tuple[int, int]] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        self._key: bytes | None = None
        self._last = 0.0
        self._broken = False
        self._full = False  # a write found the disk full (said once)

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location = state["location"]
        self._reset()

    def _sign_staged(self) -> None:
        """This session's experiment and searcher state, from Tune's own staging copy."""
        staging = _STAGING.get(self.location)
        if staging is None:
            return
        names = StateFolder(staging).names()
        now = {n: names[n] for n in state_files(names) if n != TUNER_FILE
               and not n.endswith("/error.pkl") and not n.startswith("callback-states-")}
        if now != self._staged:
            sign(self.location, self._key, names=list(now), source=staging)
            self._staged = now

    def _sign_stored(self) -> None:
        """``tuner.pkl`` once, and new ``error.pkl`` files, from the experiment folder."""
        names = StateFolder(self.location).names()
        now = {n: names[n] for n in state_files(names)}
        if now == self._seen:
            return
        start_ns = (self._start - SLACK_S) * 1e9
        mine = [n for n in now if now[n][0] >= start_ns and (
            n.endswith("/error.pkl") or (n == TUNER_FILE and not self._tuner_signed))]
        if mine:
            sign(self.location, self._key, names=mine)
            self._tuner_signed = self._tuner_signed or TUNER_FILE in mine
        self._seen = now

    def sign_changed(self, at_least_every: float = 0.0) -> None:
        """Sign what this session changed; the experiment folder is looked at most once per
        ``at_least_every`` seconds (a listing of an object store costs requests: `EVERY_S`)."""
        if self._broken:
            return
        try:
            if self._key is None:
                self._key = state_key()
            self._sign_staged()
            if time.monotonic() - self._last >= at_least_every:
                self._last = time.monotonic()
                self._sign_stored()
        except OSError as e:
            if not is_disk_full(e):
                self._broken = True
                log.error("the search's state is no longer signed: %s", first_line(e))
            elif not self._full:  # tried again at the next step: the disk may have room by then
                self._full = True
                log.warning("the search's state is not signed while its disk is full")
        except SearchError as e:  # the run goes on; its resume will say why
            self._broken = True
            log.error("the search's state is no longer signed: %s", first_line(e))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if trials and self.location not in _STAGING:
            staging = getattr(getattr(trials[0], "storage", None),
                              "experiment_driver_staging_path", None)
            if staging:
                _STAGING[self.location] = str(staging)
        self.sign_changed(EVERY_S[is_uri(self.location)])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sign_changed()
