"""Ray's results are the source of truth: the epochs a trial reported to Tune (its
``result.json`` in the experiment folder) that its MLflow run lacks are written to it, once
each, and a trial run's ``epochs_run`` is made to agree with Ray's.

For whatever tracking lost however it lost it: a driver killed with records still queued, a
record MLflow rejected, a spool file deleted by hand.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric
from pyarrow import fs

from awd.errors import first_line
from search import schema, storage
from search.tracking.records import RunSpec, RunWriter, Unwrap, epoch_record, plain_trial

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # Ray's: one JSON line per result a trial reported
SUMMARY_FROM_RAY = (schema.EPOCHS_RUN, schema.TRAIN_SECONDS)


@dataclass
class Backfilled:
    """What a backfill wrote, and why it stopped early if it did (``error``)."""

    epochs: dict[str, list[int]] = field(default_factory=dict)  # trial id -> epochs written
    runs_created: list[str] = field(default_factory=list)  # trial ids
    epochs_run_fixed: list[str] = field(default_factory=list)  # trial ids
    error: str = ""

    @property
    def written(self) -> int:
        return sum(len(v) for v in self.epochs.values())


def trial_results(experiment_dir: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(trial id, its results in order) for every trial folder of a Tune experiment, local or
    at a storage URI."""
    location = storage.absolute(experiment_dir)
    filesystem, root = fs.FileSystem.from_uri(location if storage.is_uri(location)
                                              else f"file://{location}")
    infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != fs.FileType.Directory:
            continue
        text = storage.read_text(storage.join(location, info.base_name, RESULT_FILE))
        rows = []
        for line in (text or "").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # the last line of a killed driver's run may be cut short
                continue
        trial_id = next((str(r["trial_id"]) for r in rows if r.get("trial_id")), None)
        if trial_id:
            yield trial_id, rows


def backfill(tracking_uri: str, experiment_dir: str, experiment_id: str, parent_run_id: str,
             space: str, extra_params: dict[str, Any] | None = None,
             role: str = schema.ROLE_TRIAL, unwrap: Unwrap = plain_trial) -> Backfilled:
    """Write to each trial's run under ``parent_run_id`` the epochs Ray has and MLflow lacks
    (creating the run if it has none, as `search.tune.callback.MLflowTrialLogger` would), and set
    its ``epochs_run``/``train_seconds`` to Ray's last values where they differ. Never raises
    for the store: an unreachable MLflow ends it with ``error`` set (run it again later)."""
    spec = RunSpec(experiment_id, parent_run_id, space, role, dict(extra_params or {}))
    writer = RunWriter(tracking_uri)
    done = Backfilled()
    try:
        for trial_id, rows in trial_results(experiment_dir):
            _backfill_trial(writer, spec, unwrap, trial_id, rows, done)
    except Exception as e:  # MLflow away or refusing: what was written stays written
        done.error = first_line(e)
        log.warning("MLflow: backfill from Ray's results stopped: %s", done.error)
    if done.written or done.epochs_run_fixed:
        log.warning("MLflow: backfilled %d epoch(s) of %d trial(s) from Ray's results%s",
                    done.written, len(done.epochs),
                    f"; epochs_run fixed on {len(done.epochs_run_fixed)}"
                    if done.epochs_run_fixed else "")
    return done


def _backfill_trial(writer: RunWriter, spec: RunSpec, unwrap: Unwrap, trial_id: str,
                    rows: list[dict[str, Any]], done: Backfilled) -> None:
    start = spec.start(trial_id, *unwrap(dict(rows[0].get("config") or {})))
    run_id = writer.find_run(start)
    if run_id is None:
        if not any(epoch_record(spec, trial_id, r) for r in rows):
            return  # no epoch to show: the driver's own bookkeeping covers such trials
        writer(start)
        run_id = writer.find_run(start)
        done.runs_created.append(trial_id)
    assert run_id is not None
    have = set(writer.logged_epochs(run_id))
    for row in rows:  # the first report of an epoch wins, as when it was logged live
        record = epoch_record(spec, trial_id, row,
                              timestamp_ms=int(float(row.get("timestamp", time.time())) * 1000))
        if record is not None and record["epoch"] not in have:
            writer(record)
            have.add(record["epoch"])
            done.epochs.setdefault(trial_id, []).append(record["epoch"])
    last = rows[-1]
    run = writer.client.get_run(run_id)
    logged = run.data.metrics
    if schema.EPOCHS_RUN not in logged or schema.EPOCHS_RUN not in last:
        return  # a run still open: its end writes the summary
    now = int(time.time() * 1000)
    fixes = [Metric(k, float(last[k]), now, 0) for k in SUMMARY_FROM_RAY
             if k in last and logged.get(k) != float(last[k])]
    if any(m.key == schema.EPOCHS_RUN for m in fixes):
        writer.client.log_batch(run_id, metrics=fixes)
        done.epochs_run_fixed.append(trial_id)
