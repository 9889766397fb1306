"""One search from start (or resume) to summary: Ray, Tune, the MLflow parent run, the end."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.result_grid import ResultGrid
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from awd.data.corpus import verify_data
from awd.errors import CheckpointError, DataError
from search import schema, storage
from search.errors import SearchError
from search.lock import DriverLock
from search.options import SearchOptions, resumed
from search.results import TrialSummary, pick_best
from search.stages import confirm
from search.state import SearchState
from search.tracking.backfill import backfill
from search.tracking.records import replay, spool_path
from search.tracking.store import (
    check_tracking_uri,
    close_open_trials,
    ensure_experiment,
    prune_child_runs,
    reopen_interrupted_trials,
    start_parent_run,
    write_summary,
)
from search.tracking.transfer import best_configurations
from search.tune.callback import MLflowTrialLogger, close_all
from search.tune.console import SearchConsole, quiet_ray, quiet_trainable
from search.tune.grid import summarize
from search.tune.scheduler import PersistentASHA
from search.tune.searcher import default_study_storage, make_searcher
from search.tune.trainable import export_best_model, train_trial
from search.uris import resolve_tracking_uri

log = logging.getLogger(__name__)

RUNGS_FILE = "asha_rungs.json"


@dataclass
class SearchOutcome:
    """What a finished (or ended) search leaves: its trials, the best, and where it all is."""

    trials: list[TrialSummary]
    best: TrialSummary | None
    parent_run_id: str
    tracking_uri: str
    experiment_dir: str  # a local path or a storage URI
    best_config_path: Path | None
    confirmation: confirm.Confirmation | None = None  # with --confirm-top
    stopped_by: int | None = None  # the signal (SIGINT, SIGTERM) that stopped it before its end
    experiment_id: str | None = None  # the MLflow experiment (for the link to its runs)

    @property
    def produced_results(self) -> bool:
        """Whether any trial got as far as a validation perplexity."""
        return self.best is not None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_ray_address(address: str | None, timeout: float = 5.0) -> None:
    """An unreachable HOST:PORT fails in seconds (Ray itself retries for minutes)."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address {address}: expected HOST:PORT of a Ray head (or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise SearchError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); "
                          "start it with `ray start --head` there, or leave out --address to "
                          "run on a local Ray") from None


def connect_ray(address: str | None) -> None:
    """Join the given cluster, or start a local one; data location travels to the workers."""
    check_ray_address(address)
    env = {k: os.environ[k] for k in ("AWD_DATA_DIR", "AWD_CACHE_DIR") if k in os.environ}
    try:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": env} if env else None, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a new local cluster"
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        raise SearchError(f"cannot connect to Ray at {where}: {e}{cause}") from None


def check_data(dataset: str) -> None:
    """Every trial would fail without its corpus, or with an edited one: say so before
    starting any."""
    try:
        verify_data(dataset)
    except DataError as e:
        fetch = f"python -m awd.data fetch {dataset}"
        hint = "" if fetch in str(e) else f" (fetch it with `{fetch}`)"
        raise SearchError(f"{e}{hint}") from None


def default_gpus_per_trial(opts: SearchOptions) -> float:
    if opts.gpus_per_trial is not None:
        return opts.gpus_per_trial
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def check_resources(opts: SearchOptions, cpus: float, gpus: float) -> None:
    """A trial that no node can hold would wait forever: on a local cluster (whose resources
    are all known) that is an error; on a joined one an autoscaler may still add a node."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes)
    if fits:
        return
    largest: dict[str, float] = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)),
                                    default={})
    need = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
    have = f"{largest.get('CPU', 0):g} CPU and {largest.get('GPU', 0):g} GPU"
    if opts.address is None:
        raise SearchError(f"a trial needs {need} but this machine's Ray has {have}; lower "
                          "--cpus-per-trial / --gpus-per-trial")
    log.warning("a trial needs %s; no node of the cluster has that now (largest: %s): trials "
                "wait until the autoscaler adds such a node", need, have)


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


def _scheduler(opts: SearchOptions) -> TrialScheduler:
    space = opts.space_spec
    if opts.scheduler == "none":
        return FIFOScheduler()
    return PersistentASHA(storage.join(opts.experiment_dir, RUNGS_FILE), time_attr=schema.EPOCH,
                          metric=space.metric, mode=space.mode, max_t=opts.epochs,
                          grace_period=opts.grace, reduction_factor=3)


def _trial_name(trial: tune.experiment.Trial) -> str:
    return f"{trial.config.get('model', 'trial')}_{trial.trial_id}"


def _trainable(cpus: float, gpus: float) -> Any:
    """The trial function with its resources, for a new Tuner and a restored one alike; Ray's
    per-epoch checkpoint and snapshot messages off (`search.tune.console`)."""
    quiet_ray()
    return tune.with_resources(quiet_trainable(train_trial), {"cpu": cpus, "gpu": gpus})


def _console(opts: SearchOptions) -> SearchConsole:
    """The search's console output; Tune's own reporters are silenced (``verbose=0``)."""
    space = opts.space_spec
    return SearchConsole(space.metric, space.mode,
                         stopper="ASHA" if opts.scheduler == "asha" else "the scheduler")


def _searcher(opts: SearchOptions, study_storage: str | None, study_name: str, concurrency: int,
              warm_starts: list[dict[str, Any]]) -> Searcher:
    """TPE over the space, every trial's config with the search's fixed values applied."""
    overrides = {**opts.fixed_values, "epochs": opts.epochs}
    return make_searcher(opts.space_spec, overrides, opts.seed, study_name, concurrency,
                         storage_url=study_storage, sampler=opts.sampler,
                         warm_starts=warm_starts,
                         report_intermediate=opts.report_intermediate)


def _start_new(opts: SearchOptions, client: MlflowClient, uri: str, gpus: float,
               concurrency: int) -> tuple[tune.Tuner, SearchState]:
    """The parent run, the saved state and the Tuner of a new search."""
    space = opts.space_spec
    if tune.Tuner.can_restore(opts.experiment_dir):
        raise SearchError(f"a search already exists at {opts.experiment_dir}; pass --resume to "
                          "continue it, or --experiment NAME to start another")
    warm_starts = (best_configurations(client, opts.warm_start_from, opts.top)
                   if opts.warm_start_from else [])
    # The study first: a storage that cannot be opened fails before anything is written.
    study_storage = opts.study_storage or default_study_storage(uri)
    study_name = f"{opts.experiment_name}-{uuid.uuid4().hex[:8]}"
    searcher = _searcher(opts, study_storage, study_name, concurrency, warm_starts)
    exp_id = ensure_experiment(client, opts.experiment_name, uri)
    params = {**opts.as_params(), "gpus_per_trial": gpus, "concurrency": concurrency,
              "max_epochs": opts.epochs, "grace_period": opts.grace, "metric": space.metric,
              "study_storage": study_storage}
    commit = git_commit()
    tags = {schema.SPACE: space.name, schema.MODEL: space.model, schema.DATASET: space.dataset,
            schema.GIT_COMMIT: commit, schema.SEED: str(opts.seed),
            schema.RAY_ADDRESS: ray.get_runtime_context().gcs_address,
            schema.STORAGE: opts.experiment_dir, schema.STUDY_STORAGE: study_storage,
            schema.STUDY_NAME: study_name}
    if opts.warm_start_from:
        tags[schema.WARM_START_FROM] = opts.warm_start_from
    parent = start_parent_run(client, exp_id, f"{space.name}-search", tags, params,
                              dataset=space.dataset, git_commit=commit)
    state = SearchState(parent_run_id=parent, experiment_id=exp_id, tracking_uri=uri,
                        options=opts, gpus_per_trial=gpus,
                        study_storage=study_storage, study_name=study_name)
    state.save(opts.experiment_dir)
    logger = MLflowTrialLogger(uri, exp_id, parent, space.name, {"gpus_per_trial": gpus},
                               experiment_dir=opts.experiment_dir)
    tuner = tune.Tuner(
        _trainable(opts.cpus_per_trial, gpus),
        tune_config=tune.TuneConfig(search_alg=searcher,
                                    scheduler=_scheduler(opts),
                                    num_samples=opts.num_samples, time_budget_s=opts.time_budget,
                                    reuse_actors=True,  # no new worker + torch import per trial
                                    trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=opts.experiment_name, storage_path=opts.storage_path,
            callbacks=[logger, _console(opts)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            # each trial's log (`search.tune.console.TRIAL_LOG`), from the node that ran it into
            # the trial's folder
            sync_config=tune.SyncConfig(sync_artifacts=True),
            verbose=0,  # `search.tune.console` prints instead, saved with the Tuner for --resume
        ),
    )
    return tuner, state


def unfinished_trials(experiment_dir: str) -> frozenset[str]:
    """The trials Tune had not ended when it was stopped, from the state it saved then (after
    saving it, Tune marks every live trial TERMINATED, like one it ended itself)."""
    saved = ExperimentAnalysis(experiment_dir).trials
    return frozenset(t.trial_id for t in saved if t.status not in ("TERMINATED", "ERROR"))


def _write_best_config(opts: SearchOptions, best: TrialSummary) -> Path:
    path = Path(opts.best_config_path)
    path.write_text(json.dumps(best.full_config, indent=2, sort_keys=True))
    return path


def _fit(tuner: tune.Tuner) -> tuple[ResultGrid, int | None]:
    """Tune's results, and the signal that stopped it early (SIGINT, SIGTERM), if any.

    Tune catches SIGINT itself (it saves its state and ends the run); SIGTERM, which Tune
    leaves to Python's default (death, nothing saved), is handed to Tune's SIGINT handler, so
    that `kill`, systemd and schedulers stop a search as cleanly as Ctrl-C. A second SIGTERM
    kills at once. Tune's handler puts the previous SIGINT handler back when it catches the
    signal, and only then (a contract that tests/test_confirm.py checks): that tells a stop."""
    before = signal.getsignal(signal.SIGINT)
    catching = (threading.current_thread() is threading.main_thread()
                and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")))
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        tunes = signal.getsignal(signal.SIGINT)
        if terminated or tunes is before or not callable(tunes):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        terminated.append(signum)
        tunes(signal.SIGINT, frame)

    with _handling(signal.SIGTERM, on_sigterm, catching):
        grid = tuner.fit()
    if terminated:
        return grid, signal.SIGTERM
    stopped = catching and signal.getsignal(signal.SIGINT) is before
    return grid, signal.SIGINT if stopped else None


@contextmanager
def _handling(signum: int, handler: Any, install: bool) -> Iterator[None]:
    previous = signal.signal(signum, handler) if install else None
    try:
        yield
    finally:
        if install:
            signal.signal(signum, previous)


def _confirm(opts: SearchOptions, state: SearchState, client: MlflowClient,
             trials: list[TrialSummary], ended: bool) -> confirm.Confirmation | None:
    """With --confirm-top (or a confirmation of this search to continue): re-train the best
    configurations and the paper configuration with new seeds (`search.stages.confirm`). Not after
    an interrupted search (``ended`` False): its winners are not known yet."""
    if not opts.confirm_top and not confirm.resumable(opts, state.parent_run_id):
        return None
    if not ended:
        log.warning("the search was interrupted: no confirmation now (--resume finishes the "
                    "search, then confirms its best configurations)")
        return None
    gpus = state.gpus_per_trial
    runs = (opts.confirm_top + 1) * opts.seeds
    return confirm.confirm_search(
        opts, trials, client, tracking_uri=state.tracking_uri,
        experiment_id=state.experiment_id, parent_run_id=state.parent_run_id,
        cpus=opts.cpus_per_trial, gpus=gpus,
        concurrency=default_concurrency(replace(opts, num_samples=max(runs, 1)), gpus))


# MLflow's HTTP client retries a request 7 times with backoff (minutes) before it gives up; the
# search's outbox retries on its own, so a request to a server that is away fails fast.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
DRAIN_S = 120.0  # at the end, how long to wait for MLflow to take what is still queued


def run_search(opts: SearchOptions) -> SearchOutcome:
    """Run (or resume) a search and write its summary to MLflow; returns what happened. One
    driver per search: a second one fails at once (`search.lock`)."""
    opts.validate()
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    state = _saved_state(opts.experiment_dir) if opts.resume else None
    uri = state.tracking_uri if state else resolve_tracking_uri(opts.tracking_uri)
    check_data((resumed(opts, state.options) if state else opts).space_spec.dataset)
    check_tracking_uri(uri)
    with DriverLock(opts.experiment_dir):  # nothing is written to a search before this
        if state is None:
            return _run(opts, uri, None)
        state = _saved_state(opts.experiment_dir)  # as the lock holder sees it
        return _run(resumed(opts, state.options), uri, state)


def _saved_state(experiment_dir: str) -> SearchState:
    """The saved search to resume: ours (`search.state`) and Tune's must both be there."""
    state = SearchState.load(experiment_dir)
    if not tune.Tuner.can_restore(experiment_dir):
        raise SearchError(f"nothing to resume at {experiment_dir} (no saved search there)")
    return state


def _run(opts: SearchOptions, uri: str, state: SearchState | None) -> SearchOutcome:
    client = MlflowClient(uri)
    connect_ray(opts.address)
    if state is None:
        gpus = default_gpus_per_trial(opts)
        check_resources(opts, opts.cpus_per_trial, gpus)
        tuner, state = _start_new(opts, client, uri, gpus, default_concurrency(opts, gpus))
        return _finish(opts, client, state, *_fit(tuner))
    check_resources(opts, opts.cpus_per_trial, state.gpus_per_trial)
    previous = client.get_run(state.parent_run_id).info.status
    try:  # a resume that fails leaves the search as it found it
        client.update_run(state.parent_run_id, status="RUNNING")
        _catch_up(opts, state)
        reopen_interrupted_trials(client, state.experiment_id, state.parent_run_id)
        tuner = tune.Tuner.restore(opts.experiment_dir,
                                   _trainable(opts.cpus_per_trial, state.gpus_per_trial),
                                   resume_unfinished=True, resume_errored=False)
        return _finish(opts, client, state, *_fit(tuner))
    except BaseException:
        client.update_run(state.parent_run_id, status=previous)
        raise


def _catch_up(opts: SearchOptions, state: SearchState) -> None:
    """What MLflow missed before: the spool an earlier driver left (in order, once), then any
    epoch Ray has and MLflow still lacks (Ray's results are the source of truth)."""
    for spool in (spool_path(opts.experiment_dir, state.parent_run_id),
                  spool_path(None, state.parent_run_id)):
        replay(spool, state.tracking_uri)
    backfill(state.tracking_uri, opts.experiment_dir, state.experiment_id, state.parent_run_id,
             opts.space, {"gpus_per_trial": state.gpus_per_trial})


def _finish(opts: SearchOptions, client: MlflowClient, state: SearchState, grid: ResultGrid,
            stopped_by: int | None) -> SearchOutcome:
    """The end of a search, or of its part before a signal stopped it: close every trial's run
    (and drop runs of trials Ray never kept), then the parent's summary. A stopped search is
    KILLED, has no best trial yet and writes no best configuration: --resume goes on."""
    stopped = stopped_by is not None
    trials = summarize(grid, unfinished_trials(opts.experiment_dir) if stopped else frozenset())
    left = close_all(DRAIN_S)
    if left:  # MLflow is away: what it lacks is on disk, and the summary waits for it
        log.warning("MLflow unreachable at the end of the search: results kept in %s; they are "
                    "written, and the summary too, by --resume", ", ".join(map(str, left)))
        best = None if stopped else pick_best(trials)
        best_path = _write_best_config(opts, best) if best is not None else None
        return SearchOutcome(trials, best, state.parent_run_id, state.tracking_uri,
                             opts.experiment_dir, best_path, None, stopped_by,
                             state.experiment_id)
    backfill(state.tracking_uri, opts.experiment_dir, state.experiment_id, state.parent_run_id,
             opts.space, {"gpus_per_trial": state.gpus_per_trial})
    runs = prune_child_runs(client, state.experiment_id, state.parent_run_id,
                            {t.trial_id for t in trials})
    close_open_trials(client, runs, trials)
    best = None if stopped else pick_best(trials)
    confirmation = _confirm(opts, state, client, trials, ended=not stopped)
    with tempfile.TemporaryDirectory() as d:
        model = None
        if best is not None and best.checkpoint is not None:
            try:
                model = export_best_model(best.checkpoint, Path(d) / "best_model.pt")
            except CheckpointError as e:
                log.warning("the best trial's model is not logged: %s", e)
        write_summary(client, state.parent_run_id, state.gpus_per_trial, runs, trials, best,
                      model, stopped=stopped)
    best_path = _write_best_config(opts, best) if best is not None else None
    return SearchOutcome(trials, best, state.parent_run_id, state.tracking_uri,
                         opts.experiment_dir, best_path, confirmation, stopped_by,
                         state.experiment_id)
