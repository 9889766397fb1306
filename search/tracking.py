"""The MLflow bridge: tracking-URI checks, the parent run of a search, one nested child run
per trial, and the summary and artifacts written when the search ends.

Trials are logged from the driver by a Tune callback (not from inside the trainables), so
workers on other nodes need no MLflow access of their own and a restored search keeps logging
into the same runs: each child run is found again by its trial id under the parent.
The names used are those of `search.schema`.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search import schema

log = logging.getLogger(__name__)


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used; raised before any trial starts."""


def normalize_tracking_uri(uri: str | None, workdir: Path | None = None) -> str:
    """Default to a SQLite file in the working folder; make SQLite paths absolute so that the
    printed ``mlflow ui`` command works from anywhere."""
    workdir = workdir or Path.cwd()
    if not uri:
        return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(workdir / uri[len('sqlite:///'):]).resolve()}"
    return uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with the reason, if the tracking store cannot be reached or written."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"MLflow server at {uri} answered {response.status}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
                "(`mlflow server --host 0.0.0.0 --port 5000 ...`) or pass another --tracking-uri"
            ) from None
        return
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir():
            raise TrackingError(f"folder {db.parent} of the MLflow database does not exist")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:
        raise TrackingError(f"cannot use MLflow tracking URI {uri}: {e}") from None


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, creating it (artifacts next to a SQLite database) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def start_parent_run(client: MlflowClient, experiment_id: str, run_name: str,
                     tags: dict[str, str], params: dict[str, Any]) -> str:
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={schema.ROLE: schema.ROLE_SEARCH, **tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def status_of(result: dict) -> str:
    """A trial's outcome from its last result (errors are reported separately by Tune)."""
    if result.get("diverged"):  # ASHA may stop a diverged trial before its error surfaces
        return schema.STATUS_FAILED
    return schema.STATUS_COMPLETED if result.get("finished") else schema.STATUS_STOPPED


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """The trial runs of one search, by trial id."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{schema.PARENT_RUN_ID}` = '{parent_run_id}'",
        max_results=50_000)
    return {r.data.tags[schema.TRIAL_ID]: r for r in runs if schema.TRIAL_ID in r.data.tags}


def _error_reason(trial) -> str:
    """The last line of the trial's error file: the exception and its message."""
    path = trial.error_file
    if path and Path(path).exists():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        if lines:
            return lines[-1][:500]
    return "trial failed"


class MLflowTrialLogger(Callback):
    """Logs each trial as a child run of the search's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 space: str, extra_params: dict[str, Any] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.space = space
        self.extra_params = extra_params or {}
        self.run_ids: dict[str, str] = {}
        self.logged_epochs: dict[str, int] = {}  # the last epoch logged per trial
        self._tagged: set[str] = set()
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = None
        state["_tagged"] = set()
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def get_state(self) -> dict:
        return {"run_ids": dict(self.run_ids), "logged_epochs": dict(self.logged_epochs)}

    def set_state(self, state: dict) -> None:
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
        return runs[0].info.run_id if runs else None

    def run_id(self, trial) -> str:
        """The trial's child run, created on first sight (idempotent across restores)."""
        tid = trial.trial_id
        if tid not in self.run_ids:
            existing = self._find_child(tid)
            self.run_ids[tid] = existing or self._create_child(trial)
        return self.run_ids[tid]

    def _create_child(self, trial) -> str:
        config = trial.config
        tags = {schema.PARENT_RUN_ID: self.parent_run_id, schema.ROLE: schema.ROLE_TRIAL,
                schema.TRIAL_ID: trial.trial_id, schema.SPACE: self.space,
                schema.MODEL: str(config.get("model", "")),
                schema.DATASET: str(config.get("dataset", "")),
                schema.STATUS: schema.STATUS_RUNNING}
        run = self.client.create_run(self.experiment_id, run_name=f"{self.space}-{trial.trial_id}",
                                     tags=tags)
        params = {**config, **self.extra_params}
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def _safely(self, what: str, fn, *args) -> None:
        """Tracking must never kill a search: results stay in Ray's storage regardless."""
        try:
            fn(*args)
        except Exception as e:  # any tracking failure is logged, not raised
            log.warning("MLflow: could not %s: %s", what, e)

    # --- Tune hooks ----------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._safely("create the trial run", self.run_id, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._safely("log epoch metrics", self._log_result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        failure = "diverged (see the trial's error)" if result.get("diverged") else None
        self._safely("finish the trial run", self.finish, self.run_id(trial), result,
                     status_of(result), failure)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._safely("mark the trial failed", self.finish, self.run_id(trial),
                     trial.last_result or {}, schema.STATUS_FAILED, _error_reason(trial))

    def _log_result(self, trial, result: dict) -> None:
        step = int(result["epoch"])
        # A diverged epoch is no result; an epoch re-run after a restore is logged only once.
        if result.get("diverged") or step <= self.logged_epochs.get(trial.trial_id, 0):
            return
        self.logged_epochs[trial.trial_id] = step
        run_id, now = self.run_id(trial), int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, step)
                   for k in schema.EPOCH_METRICS if k in result]
        tags = []
        if trial.trial_id not in self._tagged:  # once per trial (again after a restore)
            self._tagged.add(trial.trial_id)
            metrics.append(Metric("num_params", float(result["num_params"]), now, 0))
            tags = [RunTag(schema.DEVICE, str(result.get("device_name", ""))),
                    RunTag(schema.NODE_IP, str(result.get("node_ip", ""))),
                    RunTag(schema.NODE_ID, str(result.get("node_id", "")))]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def finish(self, run_id: str, result: dict, status: str, failure: str | None) -> None:
        """Close a trial's run: its status, summary metrics and MLflow run state."""
        history = self.client.get_metric_history(run_id, "epoch_seconds")
        by_epoch = {m.step: m.value for m in history}
        now = int(time.time() * 1000)
        summary = {"epochs_run": float(len(by_epoch)), "train_seconds": sum(by_epoch.values())}
        if result.get("trigger_epoch"):
            summary["ntasgd_trigger_epoch"] = float(result["trigger_epoch"])
        if result.get("finished"):
            summary.update(final_val_ppl=result["final_val_ppl"],
                           final_test_ppl=result["final_test_ppl"])
        tags = [RunTag(schema.STATUS, status)]
        if failure:
            tags.append(RunTag(schema.FAILURE, failure))
        self.client.log_batch(run_id, tags=tags,
                              metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
        self.client.set_terminated(run_id, "FAILED" if status == schema.STATUS_FAILED
                                   else "FINISHED")


def log_best_artifacts(client: MlflowClient, run_ids: list[str], config: dict[str, Any],
                       model_file: Path | None, workdir: Path) -> None:
    """The best trial's config (JSON) and slim checkpoint, on its own run and the parent."""
    cfg = workdir / "config.json"
    cfg.write_text(json.dumps(config, indent=2, sort_keys=True))
    for run_id in run_ids:
        client.log_artifact(run_id, str(cfg))
        if model_file is not None:
            client.log_artifact(run_id, str(model_file), artifact_path="checkpoint")
