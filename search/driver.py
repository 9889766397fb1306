"""One search from start (or resume) to summary: Ray, Tune, the MLflow parent run, the end."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import ray
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from awd.config import from_flat
from awd.data.corpus import find_split_files
from awd.data.registry import resolve_data
from awd.errors import DataError
from search import schema, storage
from search.options import SearchOptions
from search.scheduler import PersistentASHA
from search.searcher import make_searcher
from search.tracking import (
    MLflowTrialLogger,
    check_tracking_uri,
    child_runs,
    ensure_experiment,
    log_best_artifacts,
    normalize_tracking_uri,
    start_parent_run,
    status_of,
)
from search.trainable import best_model_file, train_trial

log = logging.getLogger(__name__)

STATE_FILE = "awdsearch.json"
RUNGS_FILE = "asha_rungs.json"


class SearchError(RuntimeError):
    """The search cannot start or resume; the message says why."""


@dataclass
class TrialSummary:
    trial_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint: tune.Checkpoint | None
    error: str | None

    @property
    def full_config(self) -> dict[str, Any]:
        """Every field of the run, preset values included: enough to reproduce it."""
        return from_flat(self.config).to_flat()


@dataclass
class SearchOutcome:
    trials: list[TrialSummary]
    best: TrialSummary | None
    parent_run_id: str
    tracking_uri: str
    experiment_dir: str  # a local path or a storage URI
    best_config_path: Path | None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def connect_ray(address: str | None) -> None:
    """Join the given cluster, or start a local one; data location travels to the workers."""
    env = {k: os.environ[k] for k in ("AWD_DATA_DIR", "AWD_CACHE_DIR") if k in os.environ}
    try:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": env} if env else None, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a new local cluster"
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        raise SearchError(f"cannot connect to Ray at {where}: {e}{cause}") from None


def check_data(dataset: str) -> None:
    """Every trial would fail without its corpus: say so before starting any."""
    try:
        find_split_files(resolve_data(dataset))
    except DataError as e:
        raise SearchError(f"{e} (fetch it with `python -m awd.data fetch {dataset}`)") from None


def default_gpus_per_trial(opts: SearchOptions) -> float:
    if opts.gpus_per_trial is not None:
        return opts.gpus_per_trial
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def default_concurrency(opts: SearchOptions, gpus: float) -> int:
    """As many trials as the cluster holds now; an autoscaling cluster needs --concurrency to
    grow, since the resources it could add are not visible here."""
    if opts.concurrency:
        return opts.concurrency
    if opts.address:
        log.warning("concurrency sized from the cluster's current resources; pass "
                    "--concurrency on an autoscaling cluster so that it can grow")
    resources = ray.cluster_resources()
    by_cpu = int(resources.get("CPU", 1) // opts.cpus_per_trial)
    by_gpu = int(resources.get("GPU", 0) // gpus) if gpus else by_cpu
    return max(1, min(by_cpu, by_gpu, opts.num_samples))


def _scheduler(opts: SearchOptions):
    space = opts.space_spec
    if opts.scheduler == "none":
        return FIFOScheduler()
    return PersistentASHA(storage.join(opts.experiment_dir, RUNGS_FILE), time_attr="epoch",
                          metric=space.metric, mode=space.mode, max_t=opts.epochs,
                          grace_period=opts.grace, reduction_factor=3)


def _trial_name(trial) -> str:
    return f"{trial.config.get('model', 'trial')}_{trial.trial_id}"


def _trainable(cpus: float, gpus: float):
    return tune.with_resources(train_trial, {"cpu": cpus, "gpu": gpus})


def _prepare_new(opts: SearchOptions, client: MlflowClient, uri: str, gpus: float,
                 concurrency: int) -> tune.Tuner:
    space = opts.space_spec
    if tune.Tuner.can_restore(opts.experiment_dir):
        raise SearchError(f"a search already exists at {opts.experiment_dir}; pass --resume to "
                          "continue it, or --experiment NAME to start another")
    exp_id = ensure_experiment(client, opts.experiment_name, uri)
    params = {**asdict(opts), "gpus_per_trial": gpus, "concurrency": concurrency,
              "max_epochs": opts.epochs, "grace_period": opts.grace, "metric": space.metric}
    tags = {schema.SPACE: space.name, schema.MODEL: space.model, schema.DATASET: space.dataset,
            schema.GIT_COMMIT: git_commit(), schema.SEED: str(opts.seed),
            schema.RAY_ADDRESS: ray.get_runtime_context().gcs_address,
            schema.STORAGE: opts.experiment_dir}
    parent = start_parent_run(client, exp_id, f"{space.name}-search", tags, params)
    state = {"parent_run_id": parent, "experiment_id": exp_id, "tracking_uri": uri,
             "options": asdict(opts), "gpus_per_trial": gpus}
    storage.write_text(storage.join(opts.experiment_dir, STATE_FILE), json.dumps(state, indent=2))
    logger = MLflowTrialLogger(uri, exp_id, parent, space.name, {"gpus_per_trial": gpus})
    searcher = make_searcher(space, {"epochs": opts.epochs}, opts.seed,
                             f"{opts.experiment_name}-{parent[:8]}", concurrency)
    return tune.Tuner(
        _trainable(opts.cpus_per_trial, gpus),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=_scheduler(opts),
                                    num_samples=opts.num_samples, time_budget_s=opts.time_budget,
                                    reuse_actors=True,  # no new worker + torch import per trial
                                    trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=opts.experiment_name, storage_path=opts.storage_path,
            callbacks=[logger],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            verbose=1,
        ),
    )


def _load_state(opts: SearchOptions) -> dict[str, Any]:
    text = storage.read_text(storage.join(opts.experiment_dir, STATE_FILE))
    if text is None or not tune.Tuner.can_restore(opts.experiment_dir):
        raise SearchError(f"nothing to resume at {opts.experiment_dir} (no saved search there)")
    return json.loads(text)


def summarize(result_grid) -> list[TrialSummary]:
    trials = []
    for r in result_grid:
        metrics = dict(r.metrics or {})
        status = schema.STATUS_FAILED if r.error is not None else status_of(metrics)
        error = str(r.error) if r.error is not None else (
            "diverged" if status == schema.STATUS_FAILED else None)
        trials.append(TrialSummary(
            trial_id=metrics.get("trial_id", r.path.rsplit("_", 1)[-1]), status=status,
            config=dict(r.config or {}), metrics=metrics, checkpoint=r.checkpoint, error=error))
    return trials


def pick_best(trials: list[TrialSummary], metric: str) -> TrialSummary | None:
    """Best completed trial by final validation perplexity, else best by the search metric."""
    completed = [t for t in trials if t.status == schema.STATUS_COMPLETED]
    if completed:
        return min(completed, key=lambda t: t.metrics["final_val_ppl"])
    scored = [t for t in trials if t.status != schema.STATUS_FAILED
              and math.isfinite(t.metrics.get(metric, math.inf))]
    return min(scored, key=lambda t: t.metrics[metric]) if scored else None


def close_open_trials(logger: MLflowTrialLogger, runs: dict[str, Any],
                      trials: list[TrialSummary]) -> None:
    """Tune ends trials without callbacks when the time budget runs out or the driver is
    interrupted: close their runs too, so that no run stays RUNNING after the search."""
    for t in trials:
        run = runs.get(t.trial_id)
        if run is not None and run.data.tags.get(schema.STATUS) == schema.STATUS_RUNNING:
            logger.finish(run.info.run_id, t.metrics, t.status, t.error)


def write_summary(client: MlflowClient, state: dict[str, Any], runs: dict[str, Any],
                  trials: list[TrialSummary], best: TrialSummary | None) -> None:
    """The parent run's summary metrics and the best trial's artifacts; closes the parent."""
    parent = state["parent_run_id"]
    started = client.get_run(parent).info.start_time / 1000
    now = int(time.time() * 1000)
    train_seconds = sum(r.data.metrics.get("train_seconds", 0.0) for r in runs.values())
    counts = {s: sum(t.status == s for t in trials) for s in
              (schema.STATUS_COMPLETED, schema.STATUS_STOPPED, schema.STATUS_FAILED)}
    summary = {"trials_total": len(trials), "trials_completed": counts[schema.STATUS_COMPLETED],
               "trials_stopped_early": counts[schema.STATUS_STOPPED],
               "trials_failed": counts[schema.STATUS_FAILED],
               "wall_seconds": time.time() - started,
               "gpu_hours": train_seconds * state["gpus_per_trial"] / 3600}
    if best is not None:
        summary["best_val_ppl"] = best.metrics.get("final_val_ppl", best.metrics["best_val_ppl"])
        if "final_test_ppl" in best.metrics:
            summary["best_test_ppl"] = best.metrics["final_test_ppl"]
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    if best is not None:
        best_run = runs.get(best.trial_id)
        targets = [parent] + ([best_run.info.run_id] if best_run is not None else [])
        with tempfile.TemporaryDirectory() as d:
            model = None
            if best.checkpoint is not None:  # local or remote storage alike
                with best.checkpoint.as_directory() as ckpt:
                    model = best_model_file(ckpt, Path(d) / "best_model.pt")
            log_best_artifacts(client, targets, best.full_config, model, Path(d))
        client.set_tag(parent, "awdsearch.best_trial_id", best.trial_id)
    client.set_terminated(parent, "FINISHED")


def run_search(opts: SearchOptions) -> SearchOutcome:
    """Run (or resume) a search and write its summary to MLflow; returns what happened."""
    opts.validate()
    if opts.resume:
        state = _load_state(opts)
        uri = state["tracking_uri"]
        opts = replace(opts, space=state["options"]["space"])  # the space it was started with
    else:
        state, uri = None, normalize_tracking_uri(opts.tracking_uri)
    check_data(opts.space_spec.dataset)
    check_tracking_uri(uri)
    client = MlflowClient(uri)
    connect_ray(opts.address)
    if state is None:
        gpus = default_gpus_per_trial(opts)
        tuner = _prepare_new(opts, client, uri, gpus, default_concurrency(opts, gpus))
        state = _load_state(opts)
    else:
        client.update_run(state["parent_run_id"], status="RUNNING")
        tuner = tune.Tuner.restore(opts.experiment_dir,
                                   _trainable(state["options"]["cpus_per_trial"],
                                              state["gpus_per_trial"]),
                                   resume_unfinished=True, resume_errored=False)
    grid = tuner.fit()
    trials = summarize(grid)
    best = pick_best(trials, opts.space_spec.metric)
    logger = MLflowTrialLogger(uri, state["experiment_id"], state["parent_run_id"], opts.space)
    close_open_trials(logger, child_runs(client, state["experiment_id"],
                                         state["parent_run_id"]), trials)
    runs = child_runs(client, state["experiment_id"], state["parent_run_id"])
    write_summary(client, state, runs, trials, best)
    best_path = None
    if best is not None:
        best_path = Path(opts.best_config or f"best_config_{opts.experiment_name}.json")
        best_path.write_text(json.dumps(best.full_config, indent=2, sort_keys=True))
    return SearchOutcome(trials, best, state["parent_run_id"], uri, opts.experiment_dir,
                         best_path)
