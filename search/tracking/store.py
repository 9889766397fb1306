"""The MLflow side of a search: which store, the parent run, the trial runs' closing records,
and the summary and artifacts written when the search ends.

Ray-free (the Tune callback that logs each epoch is `search.tune.callback`), so that the
confirmation's statistics that `reports` shares import no Ray. Every number written here comes
from Tune's last result of each trial: nothing is read back from MLflow's metric histories.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

from awd.errors import UserError, first_line
from search import schema
from search.errors import SearchError
from search.lock import creation_lock
from search.results import TrialSummary, gpu_hours, objective, status_counts
from search.tracking.conventions import (
    dataset_ref,
    experiment_tags,
    inherited_tags,
    log_dataset,
    source_tags,
)
from search.tracking.registry import BestModel, publish_best_model
from search.uris import is_server, server_problem, sqlite_path

log = logging.getLogger(__name__)


class TrackingError(UserError):
    """The MLflow tracking store cannot be used; raised before any trial starts."""


def open_store(uri: str) -> None:
    """Open a store that is not a server, or fail with the reason: for a new SQLite file MLflow
    creates its tables here (seconds, which a search overlaps with Ray's start). The quick
    checks come first, before Ray: `check_tracking_location`.

    MLflow logs each failed statement of a SQL store at ERROR (the statement, its parameters)
    before raising; a search says itself what a failing store means (the outbox keeps what it
    could not write, a full disk stops the search), in one line, so that log is off."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if is_server(uri):
        return
    db = sqlite_path(uri)
    try:
        with creation_lock(db) if db is not None else nullcontext():
            MlflowClient(uri).search_experiments(max_results=1)
    except SearchError:
        raise
    except Exception as e:
        raise TrackingError(f"cannot use MLflow tracking URI {uri}: {first_line(e)}") from None


def check_tracking_location(uri: str, timeout: float = 5.0) -> None:
    """What can be told without opening a store: a server answers its health check, a SQLite
    file's folder exists."""
    if is_server(uri):
        problem = server_problem(uri, timeout)
        if problem is not None:
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} ({problem}); start it "
                "(`mlflow server --host 127.0.0.1 --port 5000 ...`) or pass another "
                "--tracking-uri")
        return
    db = sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise TrackingError(f"folder {db.parent} of the MLflow database does not exist")


def ensure_experiment(client: MlflowClient, name: str, uri: str, searched: Sequence[str] = (),
                      compared: Sequence[str] | None = None) -> str:
    """The experiment's id, creating it (artifacts next to a SQLite database) if needed, with
    MLflow's tags for a model-training experiment (`conventions.experiment_tags`: its saved
    view shows the space's ``searched`` params, ``compared`` in parallel coordinates). A tag
    already as wanted is left as it is."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        db = sqlite_path(uri)
        if db is not None:
            location = (db.parent / "mlartifacts" / name).as_uri()
        exp = client.get_experiment(client.create_experiment(name, artifact_location=location))
    elif exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    tags = experiment_tags(int(exp.creation_time or 0), searched, compared)
    for key, value in tags.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return str(exp.experiment_id)


def start_parent_run(client: MlflowClient, experiment_id: str, run_name: str,
                     tags: dict[str, str], params: dict[str, Any], dataset: str = "",
                     git_commit: str = "unknown") -> str:
    """The search's parent run, with its tags and MLflow's source tags (which its trial runs
    copy), the search's options as params and its ``dataset`` as MLflow's dataset input."""
    run = client.create_run(experiment_id, run_name=run_name,
                            tags={**source_tags(git_commit), schema.ROLE: schema.ROLE_SEARCH,
                                  **tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    log_dataset(client, run.info.run_id, dataset_ref(dataset) if dataset else None)
    return str(run.info.run_id)


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, Run]:
    """The trial runs of one search, by trial id."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{schema.PARENT_RUN_ID}` = '{parent_run_id}'",
        max_results=50_000)
    return {r.data.tags[schema.TRIAL_ID]: r for r in runs if schema.TRIAL_ID in r.data.tags}


def stage_run(client: MlflowClient, experiment_id: str, parent_run_id: str, role: str,
              name: str) -> str:
    """The child run of a stage after the search (role ``cache``, ``ensemble``): the one an
    earlier, killed driver started, else a new one named "<space>-<name>"."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{schema.PARENT_RUN_ID}` = '{parent_run_id}' "
        f"AND tags.`{schema.ROLE}` = '{role}'", max_results=1)
    if found:
        return str(found[0].info.run_id)
    parent = client.get_run(parent_run_id)
    space = parent.data.tags.get(schema.SPACE, "search")
    run = client.create_run(experiment_id, run_name=f"{space}-{name}", tags={
        **inherited_tags(parent.data.tags), schema.PARENT_RUN_ID: parent_run_id,
        schema.ROLE: role})
    return str(run.info.run_id)


def finished_stage_run(client: MlflowClient, experiment_id: str, parent_run_id: str,
                       role: str) -> Run | None:
    """The stage's run if a driver finished it (a resumed search reuses it as it is)."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{schema.PARENT_RUN_ID}` = '{parent_run_id}' "
        f"AND tags.`{schema.ROLE}` = '{role}' AND attributes.status = 'FINISHED'",
        max_results=1)
    return found[0] if found else None


def trial_summary_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """A trial run's once-only metrics, all taken from the trial's last Tune result."""
    summary = {name: float(result[name]) for name in (
        schema.EPOCHS_RUN, schema.TRAIN_SECONDS, schema.TRAIN_TOKENS_PER_S,
        schema.SECONDS_PER_EPOCH, schema.PEAK_MEMORY_MB) if name in result}
    if result.get(schema.NTASGD_TRIGGER_EPOCH):
        summary[schema.NTASGD_TRIGGER_EPOCH] = float(result[schema.NTASGD_TRIGGER_EPOCH])
    if result.get(schema.FINISHED):
        summary[schema.FINAL_VAL_PPL] = float(result[schema.FINAL_VAL_PPL])
        summary[schema.FINAL_TEST_PPL] = float(result[schema.FINAL_TEST_PPL])
    return summary


def finish_trial_run(client: MlflowClient, run_id: str, result: Mapping[str, Any], status: str,
                     failure: str | None) -> None:
    """Close a trial's run: its status, summary metrics and MLflow run state."""
    now = int(time.time() * 1000)
    tags = [RunTag(schema.STATUS, status)]
    if failure:
        tags.append(RunTag(schema.FAILURE, failure))
    metrics = [Metric(k, v, now, 0) for k, v in trial_summary_metrics(result).items()]
    client.log_batch(run_id, tags=tags, metrics=metrics)
    client.set_terminated(run_id, run_state(status))


# MLflow's run state for a trial's status, where it is not FINISHED.
RUN_STATES = {schema.STATUS_FAILED: "FAILED", schema.STATUS_INTERRUPTED: "KILLED"}


def run_state(status: str) -> str:
    """The MLflow run state a trial's run ends in, for its status (`schema.TRIAL_STATUSES`):
    FAILED, KILLED (interrupted: --resume goes on), else FINISHED."""
    return RUN_STATES.get(status, "FINISHED")


def prune_child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str,
                     trial_ids: set[str], on_disk: set[str] = frozenset()) -> dict[str, Run]:  # type: ignore[assignment]
    """One run per trial that Ray knows, by trial id. A driver killed between creating a
    trial's run and Tune's next snapshot of its state leaves a run for a trial that the resumed
    search never heard of (Tune asks for it anew, under a new id): such runs, and second runs
    of one trial, are deleted; but a run of an unknown trial that left results on disk
    (``on_disk``: trial ids in Ray's result files) or that completed is never deleted: it is
    kept (closed: finished if it completed, else interrupted)."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{schema.PARENT_RUN_ID}` = '{parent_run_id}'",
        max_results=50_000, order_by=["attributes.start_time ASC"])
    kept: dict[str, Run] = {}
    for run in runs:
        trial_id = run.data.tags.get(schema.TRIAL_ID)
        if trial_id is None or run.data.tags.get(schema.ROLE) != schema.ROLE_TRIAL:
            continue  # confirmation runs have their own bookkeeping
        if trial_id in trial_ids and trial_id not in kept:
            kept[trial_id] = run
            continue
        completed = run.data.tags.get(schema.STATUS) == schema.STATUS_COMPLETED
        if trial_id not in trial_ids and (trial_id in on_disk or completed):
            log.warning("MLflow: run %s of trial %s is not one Ray resumed, but it holds "
                        "results: kept", run.info.run_id, trial_id)
            if run.info.status == "RUNNING" and completed:
                client.set_terminated(run.info.run_id, "FINISHED")
            elif run.info.status == "RUNNING":
                client.log_batch(run.info.run_id, tags=[
                    RunTag(schema.STATUS, schema.STATUS_INTERRUPTED)])
                client.set_terminated(run.info.run_id, "KILLED")
            continue
        why = "a second run of its trial" if trial_id in kept else "its trial is unknown to Ray"
        log.info("MLflow: deleting run %s of trial %s (%s)", run.info.run_id, trial_id, why)
        client.delete_run(run.info.run_id)
    return kept


def reopen_interrupted_trials(client: MlflowClient, experiment_id: str,
                              parent_run_id: str) -> None:
    """On --resume, the runs of trials a stop interrupted are running again."""
    for run in child_runs(client, experiment_id, parent_run_id).values():
        if run.data.tags.get(schema.STATUS) == schema.STATUS_INTERRUPTED:
            client.set_tag(run.info.run_id, schema.STATUS, schema.STATUS_RUNNING)
            client.update_run(run.info.run_id, status="RUNNING")


def interrupt_open_trials(client: MlflowClient, experiment_id: str, parent_run_id: str) -> None:
    """A search cut short before its trials' runs were closed (a full disk, a signal while it
    closed): the runs still open are interrupted, as after Ctrl-C; --resume reopens them."""
    for run in child_runs(client, experiment_id, parent_run_id).values():
        if run.info.status == "RUNNING" or \
                run.data.tags.get(schema.STATUS) == schema.STATUS_RUNNING:
            client.set_tag(run.info.run_id, schema.STATUS, schema.STATUS_INTERRUPTED)
            client.set_terminated(run.info.run_id, run_state(schema.STATUS_INTERRUPTED))


def close_open_trials(client: MlflowClient, runs: Mapping[str, Run],
                      trials: Sequence[TrialSummary]) -> None:
    """Tune ends trials without callbacks when the time budget runs out or the driver is
    interrupted: close their runs too, so that no run stays RUNNING after the search."""
    for t in trials:
        run = runs.get(t.trial_id)
        if run is not None and (run.data.tags.get(schema.STATUS) == schema.STATUS_RUNNING
                                or run.info.status == "RUNNING"):
            finish_trial_run(client, run.info.run_id, t.metrics, t.status, t.error)


def search_summary_metrics(trials: Sequence[TrialSummary], best: TrialSummary | None,
                           wall_seconds: float, gpus_per_trial: float) -> dict[str, float]:
    """The parent run's metrics, from the trials' last results."""
    counts = status_counts(t.status for t in trials)
    summary = {"trials_total": float(len(trials)),
               "trials_completed": float(counts[schema.STATUS_COMPLETED]),
               "trials_stopped_early": float(counts[schema.STATUS_STOPPED]),
               "trials_failed": float(counts[schema.STATUS_FAILED]),
               "trials_interrupted": float(counts[schema.STATUS_INTERRUPTED]),
               "wall_seconds": wall_seconds,
               "gpu_hours": gpu_hours((t.metrics for t in trials), gpus_per_trial)}
    if best is not None:
        summary[schema.BEST_VAL_PPL] = objective(best.metrics)
        if schema.FINAL_TEST_PPL in best.metrics:
            summary[schema.BEST_TEST_PPL] = float(best.metrics[schema.FINAL_TEST_PPL])
    return summary


def write_summary(client: MlflowClient, parent_run_id: str, gpus_per_trial: float,
                  runs: Mapping[str, Run], trials: Sequence[TrialSummary],
                  best: TrialSummary | None, best_model: Path | None,
                  stopped: bool = False) -> None:
    """The parent run's summary metrics and the best trial's config; closes the parent:
    FINISHED, or KILLED and tagged partial when a signal ``stopped`` the search early. Then
    the best trial's exported model (``best_model``) goes to the Model Registry: last, so that
    a registry that fails costs only the model, with a warning."""
    started = client.get_run(parent_run_id).info.start_time / 1000
    now = int(time.time() * 1000)
    summary = search_summary_metrics(trials, best, time.time() - started, gpus_per_trial)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in summary.items()])
    best_run = runs.get(best.trial_id) if best is not None else None
    if best is not None:
        targets = [parent_run_id] + ([best_run.info.run_id] if best_run is not None else [])
        with tempfile.TemporaryDirectory() as d:
            log_best_artifacts(client, targets, best.full_config, Path(d))
        client.set_tag(parent_run_id, schema.BEST_TRIAL_ID, best.trial_id)
    client.set_tag(parent_run_id, schema.PARTIAL, str(stopped).lower())
    client.set_terminated(parent_run_id, "KILLED" if stopped else "FINISHED")
    if best is None or best_model is None:
        return
    try:
        model = BestModel(
            export_file=best_model,
            run_id=best_run.info.run_id if best_run is not None else parent_run_id,
            parent_run_id=parent_run_id, experiment_name=_experiment_name(client, parent_run_id),
            space=_space(client, parent_run_id), trial_id=best.trial_id,
            val_ppl=summary[schema.BEST_VAL_PPL], test_ppl=summary.get(schema.BEST_TEST_PPL))
    except Exception as e:  # the store failed now: the summary is written, the model is not
        log.warning("the best model is not logged to MLflow (%s)", first_line(e))
        return
    publish_best_model(client, model)


def _experiment_name(client: MlflowClient, run_id: str) -> str:
    return str(client.get_experiment(client.get_run(run_id).info.experiment_id).name)


def _space(client: MlflowClient, parent_run_id: str) -> str:
    tags = client.get_run(parent_run_id).data.tags
    return str(tags.get(schema.SPACE) or _experiment_name(client, parent_run_id))


def log_best_artifacts(client: MlflowClient, run_ids: Sequence[str], config: dict[str, Any],
                       workdir: Path) -> None:
    """The best trial's config (JSON: ``python -m awd.train --config`` reads it), on its own
    run and the parent. (Its model is stored once, by `search.tracking.registry`.)"""
    cfg = workdir / "config.json"
    cfg.write_text(json.dumps(config, indent=2, sort_keys=True))
    for run_id in run_ids:
        client.log_artifact(run_id, str(cfg))
