"""A trial's MLflow records (its child run, each epoch, its end) as plain JSON dicts, and the
one place that writes them into MLflow, idempotently.

Records are plain dicts so that `search.tracking.outbox` can spool them to a file and a later
process can write them. Each carries (parent run, trial id) and, for an epoch, the epoch: the
run id is resolved when written. Writing is idempotent because a record may be sent twice (a request
that timed out after the server applied it, a spool replayed after a crash), and MLflow's
``log_batch`` of a metric at a step it already has adds a second history entry: an epoch is
written only if the run's ``val_ppl`` history lacks that step, a child run is created only if
none has the trial's id under the parent, a trial's end only changes what differs.

What a run gets follows MLflow's conventions (`search.tracking.conventions`): the full config as
params, the dataset as an input, the parent's source tags, system metrics under ``system/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from awd.config import from_flat
from awd.errors import ConfigError
from search import schema, storage
from search.tracking.conventions import DatasetRef, dataset_ref, inherited_tags, log_dataset
from search.tracking.outbox import Outbox, Record
from search.tracking.store import run_state, trial_summary_metrics

log = logging.getLogger(__name__)

KIND_START, KIND_EPOCH, KIND_FINISH = "start", "epoch", "finish"
STEP_MARKER = schema.VAL_PPL  # the per-epoch metric whose history says which epochs are in
SPOOL_FILE = "mlflow_spool.jsonl"

# A Tune trial's config -> the flat run config logged as params, and tags of its own.
Unwrap = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, str]]]


def plain_trial(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A search trial: its Tune config is the run config, with no tags of its own."""
    return config, {}


def full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every field of the run config with its effective value (a space's trial config holds
    only the searched keys and the preset); a config `awd` cannot read, as it is."""
    try:
        return from_flat(dict(config)).to_flat()
    except ConfigError as e:
        log.debug("MLflow: logging a trial config as given (%s)", e)
        return dict(config)


def spool_path(experiment_dir: str | None, parent_run_id: str,
               role: str = schema.ROLE_TRIAL) -> Path:
    """Where a logger keeps what MLflow could not take yet: in the Tune experiment folder
    (beside Ray's results, so that `--resume` finds it), or, for storage at a URI (an object
    store cannot be appended to) or no folder known, in the user's cache folder."""
    if experiment_dir and not storage.is_uri(experiment_dir):
        name = SPOOL_FILE if role == schema.ROLE_TRIAL else f"mlflow_spool_{role}.jsonl"
        return Path(experiment_dir) / name
    return (Path(platformdirs.user_cache_dir("awdsearch")) / "mlflow_spool"
            / f"{parent_run_id}-{role}.jsonl")


class MissingRun(Exception):
    """An epoch or end of a trial whose child run does not exist: nothing to write it to."""


@dataclass(frozen=True)
class RunSpec:
    """Where one logger's trial runs go and how they are named and tagged."""

    experiment_id: str
    parent_run_id: str
    space: str
    role: str = schema.ROLE_TRIAL
    extra_params: dict[str, Any] = field(default_factory=dict)

    def record(self, kind: str, trial_id: str, **fields: Any) -> Record:
        return {"kind": kind, "trial_id": trial_id, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, **fields}

    def start(self, trial_id: str, config: Mapping[str, Any],
              own_tags: Mapping[str, str]) -> Record:
        """Create (or find again) the trial's child run, with its params (the full config) and
        its dataset input."""
        config = full_config(config)
        dataset = dataset_ref(str(config.get("dataset", "")))
        tags = {schema.PARENT_RUN_ID: self.parent_run_id, schema.ROLE: self.role,
                schema.TRIAL_ID: trial_id, schema.SPACE: self.space,
                schema.MODEL: str(config.get("model", "")),
                schema.DATASET: str(config.get("dataset", "")),
                schema.STATUS: schema.STATUS_RUNNING, **own_tags}
        kind = "" if self.role == schema.ROLE_TRIAL else f"{self.role}-"
        params = {k: str(v) for k, v in {**config, **self.extra_params}.items()}
        return self.record(KIND_START, trial_id, run_name=f"{self.space}-{kind}{trial_id}",
                           tags=tags, params=params,
                           dataset=dataset.as_record() if dataset is not None else None)


def epoch_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's MLflow metrics from its Tune result: `schema.EPOCH_METRICS` (read from
    `schema.TUNE_KEYS` where Tune's name differs) and the trial's system measurements."""
    metrics = {name: float(result[schema.TUNE_KEYS.get(name, name)])
               for name in schema.EPOCH_METRICS if schema.TUNE_KEYS.get(name, name) in result}
    metrics.update({k: float(v) for k, v in result.items()
                    if k.startswith(schema.SYSTEM_PREFIX)})
    return metrics


def epoch_record(spec: RunSpec, trial_id: str, result: Mapping[str, Any],
                 timestamp_ms: int | None = None) -> Record | None:
    """One epoch's metrics (step = epoch), with the trial's once-only metric and node tags;
    None for a result that is no epoch's result (diverged, or without a validation
    perplexity)."""
    if result.get(schema.DIVERGED) or STEP_MARKER not in result or schema.EPOCH not in result:
        return None
    once = ({schema.NUM_PARAMS: float(result[schema.NUM_PARAMS])}
            if schema.NUM_PARAMS in result else {})
    return spec.record(
        KIND_EPOCH, trial_id, epoch=int(result[schema.EPOCH]),
        timestamp=timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        metrics=epoch_metrics(result), once=once,
        tags={schema.DEVICE: str(result.get("device_name", "")),
              schema.NODE_IP: str(result.get("node_ip", "")),
              schema.NODE_ID: str(result.get("node_id", ""))})


def finish_record(spec: RunSpec, trial_id: str, result: Mapping[str, Any], status: str,
                  failure: str | None) -> Record:
    """The trial's end: its status, failure reason and once-only summary metrics."""
    return spec.record(KIND_FINISH, trial_id, status=status, failure=failure or "",
                       summary=trial_summary_metrics(result))


def is_transient(error: BaseException) -> bool:
    """An outage (keep the record, retry) rather than a rejection of the record: no answer
    (connection refused, timeout: MLflow reports those as INTERNAL_ERROR), a 5xx or 429."""
    if isinstance(error, MissingRun):
        return False
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return True  # OSError, requests' errors, a locked SQLite file: the store, not the record


class RunWriter:
    """Writes records into one tracking store, each at most once (see the module's doc).

    What it knows of a run (its id, its logged epochs) is a cache of MLflow's state: it is
    forgotten whenever a write to that trial fails, and asked of MLflow again on the next."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self._run_ids: dict[tuple[str, str], str] = {}  # (parent run, trial id) -> run id
        self._steps: dict[str, set[int]] = {}  # run id -> epochs in its STEP_MARKER history
        self._once: set[str] = set()  # runs that have their once-only metrics
        self._tags: dict[str, dict[str, str]] = {}  # run id -> its tags as last written

    def __call__(self, record: Record) -> None:
        try:
            {KIND_START: self._start, KIND_EPOCH: self._epoch,
             KIND_FINISH: self._finish}[record["kind"]](record)
        except Exception:
            self._forget(record)
            raise

    def _forget(self, record: Record) -> None:
        run_id = self._run_ids.pop((record["parent_run_id"], record["trial_id"]), None)
        if run_id is not None:
            self._steps.pop(run_id, None)
            self._once.discard(run_id)
            self._tags.pop(run_id, None)

    def find_run(self, record: Record) -> str | None:
        """The trial's child run: by the trial id tag under the parent (also after a restore
        or in another process)."""
        key = (record["parent_run_id"], record["trial_id"])
        if key not in self._run_ids:
            runs = self.client.search_runs(
                [record["experiment_id"]],
                filter_string=f"tags.`{schema.PARENT_RUN_ID}` = '{key[0]}' and "
                f"tags.`{schema.TRIAL_ID}` = '{key[1]}'",
                max_results=1, order_by=["attributes.start_time ASC"])
            if not runs:
                return None
            self._run_ids[key] = str(runs[0].info.run_id)
        return self._run_ids[key]

    def _run(self, record: Record) -> str:
        run_id = self.find_run(record)
        if run_id is None:
            raise MissingRun(f"no run of trial {record['trial_id']} under parent run "
                             f"{record['parent_run_id']}")
        return run_id

    def _start(self, record: Record) -> None:
        found = self.find_run(record)
        if found is not None:
            if not self.client.get_run(found).data.params:  # a start cut short by a kill
                self._write_params(found, record)  # between the run's creation and its params
            return
        parent = self.client.get_run(record["parent_run_id"])
        run = self.client.create_run(
            record["experiment_id"], run_name=record["run_name"],
            tags={**inherited_tags(parent.data.tags), **record["tags"]})
        run_id = str(run.info.run_id)
        self._run_ids[(record["parent_run_id"], record["trial_id"])] = run_id
        self._steps[run_id] = set()
        self._tags[run_id] = dict(record["tags"])
        self._write_params(run_id, record)

    def _write_params(self, run_id: str, record: Record) -> None:
        self.client.log_batch(run_id, params=[Param(k, v) for k, v in record["params"].items()])
        dataset = record["dataset"]
        log_dataset(self.client, run_id, DatasetRef(**dataset) if dataset else None)

    def logged_epochs(self, run_id: str) -> set[int]:
        """The epochs the run has (its STEP_MARKER history), from MLflow on first ask."""
        if run_id not in self._steps:
            run = self.client.get_run(run_id)
            self._tags[run_id] = dict(run.data.tags)
            if schema.NUM_PARAMS in run.data.metrics:
                self._once.add(run_id)
            self._steps[run_id] = ({m.step for m in self.client.get_metric_history(
                run_id, STEP_MARKER)} if STEP_MARKER in run.data.metrics else set())
        return self._steps[run_id]

    def _epoch(self, record: Record) -> None:
        run_id = self._run(record)
        steps = self.logged_epochs(run_id)
        step, now = int(record["epoch"]), int(record["timestamp"])
        if step in steps:
            return
        metrics = [Metric(k, float(v), now, step) for k, v in record["metrics"].items()]
        if run_id not in self._once:
            metrics += [Metric(k, float(v), now, 0) for k, v in record["once"].items()]
        # The node and device tags say where the latest epoch ran: they change when a trial
        # resumes on another node after losing its own.
        written = self._tags.setdefault(run_id, {})
        tags = [RunTag(k, v) for k, v in record["tags"].items() if v and written.get(k) != v]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        steps.add(step)
        self._once.add(run_id)
        written.update({t.key: t.value for t in tags})

    def _finish(self, record: Record) -> None:
        run_id = self._run(record)
        run = self.client.get_run(run_id)
        now = int(time.time() * 1000)
        wanted = {schema.STATUS: record["status"]}
        if record["failure"]:
            wanted[schema.FAILURE] = record["failure"]
        tags = [RunTag(k, v) for k, v in wanted.items() if run.data.tags.get(k) != v]
        metrics = [Metric(k, float(v), now, 0) for k, v in record["summary"].items()
                   if run.data.metrics.get(k) != float(v)]
        if tags or metrics:
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
        state = run_state(record["status"])
        if run.info.status != state:
            self.client.set_terminated(run_id, state)


def mlflow_outbox(tracking_uri: str, spool: Path) -> Outbox:
    """An outbox writing trial records into ``tracking_uri``, spooling to ``spool``."""
    return Outbox(RunWriter(tracking_uri), spool, where=tracking_uri, is_transient=is_transient)


def replay(spool: Path, tracking_uri: str, timeout: float = 60.0) -> bool:
    """Write what an earlier process left in ``spool`` (in order, each record once); True if
    nothing is left. Records that cannot be written yet stay in the file."""
    if not spool.exists():
        return True
    outbox = mlflow_outbox(tracking_uri, spool)
    left = outbox.pending
    done = outbox.close(timeout)
    if left:
        log.warning("MLflow: %d record(s) left by an earlier run in %s: %s", left, spool,
                    "written" if done else f"{outbox.pending} still to write (MLflow "
                    "unreachable); they are written on the next --resume")
    return done
