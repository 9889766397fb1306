"""The Tune callback that logs each trial as a child run of the search's parent run.

Trials are logged from the driver (not from inside the trainables), so workers on other nodes
need no MLflow access of their own and a restored search keeps logging into the same runs:
each child run is found again by its trial id under the parent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial

from search import schema
from search.results import status_of
from search.tracking import finish_trial_run

log = logging.getLogger(__name__)

# A Tune trial's config -> the flat run config logged as params, and tags of its own.
Unwrap = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, str]]]


def plain_trial(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A search trial: its Tune config is the run config, with no tags of its own."""
    return config, {}


def _error_reason(trial: Trial) -> str:
    """The last line of the trial's error file: the exception and its message."""
    path = trial.error_file
    if path and Path(path).exists():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            return lines[-1][:500]
    return "trial failed"


class MLflowTrialLogger(Callback):
    """Logs each trial as a child run of the search's parent run, every epoch exactly once.

    ``role`` tags the runs (``trial``; ``confirm`` for `search.confirm`'s re-trainings), and
    ``unwrap`` (a module-level function: the callback is pickled with Tune's state) turns a Tune
    config into the run config and the run's own tags."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 space: str, extra_params: dict[str, Any] | None = None,
                 role: str = schema.ROLE_TRIAL, unwrap: Unwrap = plain_trial) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.space = space
        self.extra_params = extra_params or {}
        self.role = role
        self.unwrap = unwrap
        self.run_ids: dict[str, str] = {}
        self.logged_epochs: dict[str, int] = {}  # the last epoch logged per trial
        self._tagged: set[str] = set()
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_tagged"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a logger pickled by an older version (a resumed search) logs search trials
        self.__dict__.update({"role": schema.ROLE_TRIAL, "unwrap": plain_trial, **state})

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def get_state(self) -> dict[str, Any]:
        return {"run_ids": dict(self.run_ids), "logged_epochs": dict(self.logged_epochs)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.run_ids.update(state.get("run_ids", {}))
        self.logged_epochs.update(state.get("logged_epochs", {}))

    # --- child runs ----------------------------------------------------------------------
    def _find_child(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{schema.PARENT_RUN_ID}` = '{self.parent_run_id}' and "
            f"tags.`{schema.TRIAL_ID}` = '{trial_id}'",
            max_results=1,
        )
        return str(runs[0].info.run_id) if runs else None

    def run_id(self, trial: Trial) -> str:
        """The trial's child run, created on first sight (idempotent across restores)."""
        tid = trial.trial_id
        if tid not in self.run_ids:
            existing = self._find_child(tid)
            self.run_ids[tid] = existing or self._create_child(trial)
        return self.run_ids[tid]

    def _create_child(self, trial: Trial) -> str:
        config, own_tags = self.unwrap(trial.config)
        tags = {schema.PARENT_RUN_ID: self.parent_run_id, schema.ROLE: self.role,
                schema.TRIAL_ID: trial.trial_id, schema.SPACE: self.space,
                schema.MODEL: str(config.get("model", "")),
                schema.DATASET: str(config.get("dataset", "")),
                schema.STATUS: schema.STATUS_RUNNING, **own_tags}
        kind = "" if self.role == schema.ROLE_TRIAL else f"{self.role}-"
        run = self.client.create_run(self.experiment_id,
                                     run_name=f"{self.space}-{kind}{trial.trial_id}", tags=tags)
        params = {**config, **self.extra_params}
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, str(v)) for k, v in params.items()])
        return str(run.info.run_id)

    def _safely(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Tracking must never kill a search: results stay in Ray's storage regardless."""
        try:
            fn(*args)
        except Exception as e:  # any tracking failure is logged, not raised
            log.warning("MLflow: could not %s: %s", what, e)

    # --- Tune hooks ----------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        self._safely("create the trial run", self.run_id, trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial,
                        result: dict[str, Any], **info: Any) -> None:
        self._safely("log epoch metrics", self._log_result, trial, result)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        result = trial.last_result or {}
        failure = "diverged (see the trial's error)" if result.get(schema.DIVERGED) else None
        self._safely("finish the trial run", self._finish, trial, result, status_of(result),
                     failure)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        self._safely("mark the trial failed", self._finish, trial, trial.last_result or {},
                     schema.STATUS_FAILED, _error_reason(trial))

    def _finish(self, trial: Trial, result: dict[str, Any], status: str,
                failure: str | None) -> None:
        finish_trial_run(self.client, self.run_id(trial), result, status, failure)

    def _log_result(self, trial: Trial, result: dict[str, Any]) -> None:
        step = int(result[schema.EPOCH])
        # A diverged epoch is no result; an epoch re-run after a restore is logged only once.
        if result.get(schema.DIVERGED) or step <= self.logged_epochs.get(trial.trial_id, 0):
            return
        self.logged_epochs[trial.trial_id] = step
        run_id, now = self.run_id(trial), int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, step)
                   for k in schema.EPOCH_METRICS if k in result]
        tags = []
        if trial.trial_id not in self._tagged:  # once per trial (again after a restore)
            self._tagged.add(trial.trial_id)
            metrics.append(Metric(schema.NUM_PARAMS, float(result[schema.NUM_PARAMS]), now, 0))
            tags = [RunTag(schema.DEVICE, str(result.get("device_name", ""))),
                    RunTag(schema.NODE_IP, str(result.get("node_ip", ""))),
                    RunTag(schema.NODE_ID, str(result.get("node_id", "")))]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
