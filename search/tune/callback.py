"""The Tune callback that logs each trial as a child run of the search's parent run.

Trials are logged from the driver (not from inside the trainables), so workers on other nodes
need no MLflow access of their own and a restored search keeps logging into the same runs:
each child run is found again by its trial id under the parent.

Tune's hooks run in Tune's event loop: they only hand records to an outbox
(`search.tracking.outbox`) whose own thread writes them, so that a slow or absent MLflow never
stalls the search. What MLflow cannot take is kept in a spool file
(`search.tracking.records.spool_path`) and written, once, when it is back: by this search, or by
the next ``--resume`` (`search.tracking.records.replay`).
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from search import schema
from search.results import failure_reason, status_of
from search.tracking.outbox import Outbox, Record
from search.tracking.records import (
    RunSpec,
    Unwrap,
    epoch_record,
    finish_record,
    mlflow_outbox,
    plain_trial,
    spool_path,
)

__all__ = ["MLflowTrialLogger", "Unwrap", "close_all", "plain_trial"]

log = logging.getLogger(__name__)

END_OF_FIT_DRAIN_S = 60.0  # at the end of Tune's run, while MLflow answers, wait this long

# The loggers writing in this process: a restored Tuner unpickles its own, out of the driver's
# reach, and the driver must still drain them before it writes the search's summary.
_LIVE: weakref.WeakSet[MLflowTrialLogger] = weakref.WeakSet()


def close_all(timeout: float) -> list[Path]:
    """Drain every logger of this process for up to ``timeout`` s in all, and stop them; the
    spool files still holding records (MLflow unreachable): empty when everything is written.
    """
    left = []
    for logger in list(_LIVE):
        if not logger.close(timeout):
            left.append(logger.spool_path)
    return left


def _error_text(trial: Trial) -> str | None:
    """The last line of the trial's error file: the exception and its message (None: no
    file)."""
    path = trial.error_file
    if path and Path(path).exists():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            return lines[-1][:500]
    return None


class MLflowTrialLogger(Callback):
    """Logs each trial as a child run of the search's parent run, every epoch exactly once.

    ``role`` tags the runs (``trial``; ``confirm`` for `search.stages.confirm`'s re-trainings), and
    ``unwrap`` (a module-level function: the callback is pickled with Tune's state) turns a Tune
    config into the run config and the run's own tags. ``experiment_dir`` (Tune's experiment
    folder) is where the spool file goes; the driver calls `drain` before its summary."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 space: str, extra_params: dict[str, Any] | None = None,
                 role: str = schema.ROLE_TRIAL, unwrap: Unwrap = plain_trial,
                 experiment_dir: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.space = space
        self.extra_params = extra_params or {}
        self.role = role
        self.unwrap = unwrap
        self.experiment_dir = experiment_dir
        self._outbox: Outbox | None = None
        self._started: set[str] = set()  # trials whose run was asked for in this process

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_outbox"] = None  # a thread and a file: this process's own
        state["_started"] = set()
        return state

    @property
    def spec(self) -> RunSpec:
        return RunSpec(self.experiment_id, self.parent_run_id, self.space, self.role,
                       dict(self.extra_params))

    @property
    def spool_path(self) -> Path:
        return spool_path(self.experiment_dir, self.parent_run_id, self.role)

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = mlflow_outbox(self.tracking_uri, self.spool_path)
            _LIVE.add(self)
        return self._outbox

    def get_state(self) -> dict[str, Any]:
        return {}  # MLflow itself says what is logged (see search.tracking.records)

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    # --- the driver's side ---------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        """Wait until everything handed over is in MLflow (True) or ``timeout`` s pass."""
        return self._outbox is None or self._outbox.drain(timeout)

    def close(self, timeout: float = 0.0) -> bool:
        """Drain for up to ``timeout`` s and stop the writer; what MLflow has not taken stays
        in the spool file (`spool_path`) for `search.tracking.records.replay`. True: all written."""
        if self._outbox is None:
            return True
        done = self._outbox.close(timeout)
        self._outbox = None
        _LIVE.discard(self)
        return done

    # --- Tune hooks: hand records over, never wait for MLflow ------------------------------
    def _put(self, trial: Trial, record: Record | None) -> None:
        """Tracking must never kill a search: results stay in Ray's storage regardless."""
        try:
            if trial.trial_id not in self._started:
                config, own_tags = self.unwrap(trial.config)
                self.outbox.put(self.spec.start(trial.trial_id, config, own_tags))
                self._started.add(trial.trial_id)
            if record is not None:
                self.outbox.put(record)
        except Exception as e:  # a full disk under the spool, a config unwrap cannot read
            log.warning("MLflow: could not hand over a record of trial %s: %s",
                        trial.trial_id, e)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        self._put(trial, None)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        # A diverged epoch is no result; an epoch re-run after a restore is written only once.
        self._put(trial, epoch_record(self.spec, trial.trial_id, result))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        result = trial.last_result or {}
        self._put(trial, finish_record(self.spec, trial.trial_id, result, status_of(result),
                                       failure_reason(result)))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        result = trial.last_result or {}
        self._put(trial, finish_record(self.spec, trial.trial_id, result, schema.STATUS_FAILED,
                                       failure_reason(result, _error_text(trial))
                                       or "trial failed"))

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Tune is done: let the writer finish while MLflow answers (the driver reads the runs
        next); once a write fails, return and leave the rest to the driver's `drain`."""
        if self._outbox is not None:
            self._outbox.drain(END_OF_FIT_DRAIN_S, while_reachable=True)
