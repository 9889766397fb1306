"""Fake searches in a real MLflow store, written the way a search writes them: the product's
own names (`search.schema`) and its own writers of what a search derives (a trial run's
closing metrics, the parent's summary, the best trial and its config, from
`search.tracking.store`). Only the clock is the fake's: every run starts and ends at a given
time (ms), so that reports of the same fake are the same. Used by tests/test_reports.py and
tests/test_importance.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from search import schema
from search.results import TrialSummary, pick_best
from search.tracking.store import (
    RUN_STATES,
    log_best_artifacts,
    search_summary_metrics,
    trial_summary_metrics,
)

T0 = 1_700_000_000_000  # ms: a fake search's start


def start_search(client: MlflowClient, name: str, tags: Mapping[str, str],
                 params: Mapping[str, Any], run_name: str, start: int = T0,
                 artifacts: Path | None = None) -> tuple[str, str]:
    """A new experiment and its search's parent run: (experiment id, parent run id)."""
    location = (artifacts / name).as_uri() if artifacts is not None else None
    exp_id = client.create_experiment(name, artifact_location=location)
    parent = client.create_run(exp_id, run_name=run_name, start_time=start,
                               tags={schema.ROLE: schema.ROLE_SEARCH, **tags}).info.run_id
    client.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
    return exp_id, parent


def start_trial(client: MlflowClient, exp_id: str, parent: str | None, trial_id: str,
                run_name: str, start: int, tags: Mapping[str, str],
                params: Mapping[str, Any]) -> str:
    """A trial's run (its config as params), as the Tune callback opens it; ``parent=None``: a
    stand-alone run (launched by hand), without a role or parent; a ``tags`` role (an ablation
    run's) stands."""
    own = {schema.TRIAL_ID: trial_id, schema.STATUS: schema.STATUS_RUNNING, **tags}
    if parent is not None:
        own.update({schema.ROLE: tags.get(schema.ROLE, schema.ROLE_TRIAL),
                    schema.PARENT_RUN_ID: parent})
    run_id = client.create_run(exp_id, run_name=run_name, start_time=start, tags=own).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return str(run_id)


def log_metrics(client: MlflowClient, run_id: str, metrics: Sequence[Metric]) -> None:
    """In batches of MLflow's limit (1,000 metrics a call)."""
    for chunk in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=list(metrics[chunk:chunk + 900]))


def last_result(epochs_run: int, train_seconds: float, trigger: int | None = None,
                final: tuple[float, float] | None = None) -> dict[str, Any]:
    """A trial's last Tune result, as far as closing its run reads it; ``final``: (val, test)
    perplexities of a trial that ran its whole budget."""
    result: dict[str, Any] = {schema.EPOCHS_RUN: epochs_run, schema.TRAIN_SECONDS: train_seconds}
    if trigger:
        result[schema.NTASGD_TRIGGER_EPOCH] = trigger
    if final is not None:
        result.update({schema.FINISHED: True, schema.FINAL_VAL_PPL: final[0],
                       schema.FINAL_TEST_PPL: final[1]})
    return result


def close_trial(client: MlflowClient, run_id: str, result: Mapping[str, Any], status: str,
                failure: str | None, end: int, drop: Sequence[str] = ()) -> None:
    """Close a trial's run as `search.tracking.store.finish_trial_run` does (its status, the
    metrics of `trial_summary_metrics`, MLflow's run state), at ``end``; a running trial keeps
    its run open. ``drop``: closing metrics the run lacks (a store that lost them)."""
    tags = [RunTag(schema.STATUS, status)] + ([RunTag(schema.FAILURE, failure)] if failure
                                              else [])
    metrics = [Metric(k, v, end, 0) for k, v in trial_summary_metrics(result).items()
               if k not in drop]
    client.log_batch(run_id, tags=tags, metrics=metrics)
    if status != schema.STATUS_RUNNING:
        client.set_terminated(run_id, RUN_STATES.get(status, "FINISHED"), end_time=end)


def close_search(client: MlflowClient, parent: str, trials: Sequence[TrialSummary],
                 runs: Mapping[str, str], gpus_per_trial: float, end: int) -> None:
    """Close a search's parent run as `search.tracking.store.write_summary` does, at ``end``:
    the metrics of `search_summary_metrics`, the best trial by `pick_best` (its config on its
    run, ``runs``: trial id -> run id, and on the parent), FINISHED. No model is registered."""
    start = client.get_run(parent).info.start_time
    best = pick_best(trials)
    summary = search_summary_metrics(trials, best, (end - start) / 1000, gpus_per_trial)
    client.log_batch(parent, metrics=[Metric(k, v, end, 0) for k, v in summary.items()])
    if best is not None:
        targets = [parent] + ([runs[best.trial_id]] if best.trial_id in runs else [])
        with tempfile.TemporaryDirectory() as d:
            log_best_artifacts(client, targets, best.full_config, Path(d))
        client.set_tag(parent, schema.BEST_TRIAL_ID, best.trial_id)
    client.set_tag(parent, schema.PARTIAL, "false")
    client.set_terminated(parent, "FINISHED", end_time=end)
