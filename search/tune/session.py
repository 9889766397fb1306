"""Ray and Tune for one search: the cluster (join or start it, what it can hold), the Tuner
(new or restored: trainable, scheduler, callbacks, checkpoints, failures) and running it with
the signals that stop it. The driver (`search.driver`) calls these; Ray's API stays here."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import ray
from ray import tune
from ray.tune import Callback, ExperimentAnalysis
from ray.tune.result_grid import ResultGrid
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search import schema, storage
from search.errors import (
    SearchError,
    Terminated,
    forget_terminations,
    raise_swallowed_termination,
    terminate,
)
from search.options import SearchOptions
from search.plan import ASHA_REDUCTION_FACTOR
from search.tune.console import quiet_ray, quiet_trainable
from search.tune.scheduler import PersistentASHA
from search.tune.trainable import train_trial

log = logging.getLogger(__name__)

RUNGS_FILE = "asha_rungs.json"


# --- the cluster ---------------------------------------------------------------------------
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


QUIET_WORKER = "search.tune.console.quiet_worker"  # Ray's worker_process_setup_hook
# Ray's setting (read from the environment by a raylet as it starts) that makes a new local
# cluster start one idle worker per CPU for its first driver. Tune never gives a trial one of
# them (each trial actor has a runtime environment of its own, so a process of its own): on a
# small machine they only take cores from the search's start (a 2-trial search on 2 cores ends
# 1.3 s sooner without them, median of 4 pairs: benchmarks/README.md, "search_overhead.py").
PRESTART_ENV = "RAY_prestart_worker_first_driver"


@contextmanager
def without_idle_workers() -> Iterator[None]:
    """`PRESTART_ENV` off for a raylet that ``ray.init`` starts here (a user's own value wins);
    a cluster that is joined keeps its own. This process's environment is put back after."""
    before = os.environ.get(PRESTART_ENV)
    os.environ.setdefault(PRESTART_ENV, "0")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PRESTART_ENV, None)


def connect_ray(address: str | None) -> None:
    """Join the given cluster, or start a local one (without idle workers: `PRESTART_ENV`);
    data location travels to the workers. The driver's SIGTERM handler is kept: ``ray.init``
    replaces it with one that exits with status 15, where a stopped search exits 143
    (`search.run`)."""
    check_ray_address(address)
    quiet_ray()
    env = {k: os.environ[k] for k in ("AWD_DATA_DIR", "AWD_CACHE_DIR") if k in os.environ}
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        with without_idle_workers():
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                     runtime_env={"env_vars": env, "worker_process_setup_hook": QUIET_WORKER},
                     log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a new local cluster"
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        raise SearchError(f"cannot connect to Ray at {where}: {e}{cause}") from None
    except SystemExit as e:  # Ray's own handler, while it starts: sys.exit(SIGTERM)
        if e.code == signal.SIGTERM and callable(sigterm):
            raise Terminated from None
        raise
    finally:
        if main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


def disconnect() -> None:
    """Leave the cluster (a local one this driver started stops with it)."""
    ray.shutdown()


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


def scheduler(opts: SearchOptions) -> TrialScheduler:
    space = opts.space_spec
    if opts.scheduler == "none":
        return FIFOScheduler()
    return PersistentASHA(storage.join(opts.experiment_dir, RUNGS_FILE), time_attr=schema.EPOCH,
                          metric=space.metric, mode=space.mode, max_t=opts.epochs,
                          grace_period=opts.grace,
                          reduction_factor=ASHA_REDUCTION_FACTOR)


def _trial_name(trial: tune.experiment.Trial) -> str:
    return f"{trial.config.get('model', 'trial')}_{trial.trial_id}"


def trainable(cpus: float, gpus: float) -> Any:
    """The trial function with its resources, for a new Tuner and a restored one alike; Ray's
    per-epoch checkpoint and snapshot messages off (`search.tune.console`)."""
    quiet_ray()
    return tune.with_resources(quiet_trainable(train_trial), {"cpu": cpus, "gpu": gpus})

# --- the Tuner -----------------------------------------------------------------------------
def gcs_address() -> str:
    """The address of the Ray cluster this driver is connected to (tagged on the parent run)."""
    return str(ray.get_runtime_context().gcs_address)


def can_restore(experiment_dir: str) -> bool:
    """Whether Tune saved a run at ``experiment_dir`` that `restore_tuner` can continue."""
    return bool(tune.Tuner.can_restore(experiment_dir))


def new_tuner(opts: SearchOptions, gpus: float, searcher: Searcher,
              callbacks: list[Callback]) -> tune.Tuner:
    """The Tuner of a new search: ``opts``' trials at ``gpus`` GPUs each, proposed by
    ``searcher``, stopped early by ``scheduler(opts)``, checkpointed every epoch."""
    return tune.Tuner(
        trainable(opts.cpus_per_trial, gpus),
        tune_config=tune.TuneConfig(search_alg=searcher,
                                    scheduler=scheduler(opts),
                                    num_samples=opts.num_samples, time_budget_s=opts.time_budget,
                                    reuse_actors=True,  # no new worker + torch import per trial
                                    trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=opts.experiment_name, storage_path=opts.storage_path,
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            # each trial's log (`search.tune.console.TRIAL_LOG`), from the node that ran it into
            # the trial's folder
            sync_config=tune.SyncConfig(sync_artifacts=True),
            verbose=0,  # `search.tune.console` prints instead, saved with the Tuner for --resume
        ),
    )


def restore_tuner(experiment_dir: str, cpus: float, gpus: float) -> tune.Tuner:
    """The Tuner of a saved search: finished trials kept, unfinished ones continued from their
    last checkpoint, failed ones left failed."""
    return tune.Tuner.restore(experiment_dir, trainable(cpus, gpus), resume_unfinished=True,
                              resume_errored=False)


# --- running it ----------------------------------------------------------------------------
def unfinished_trials(experiment_dir: str) -> frozenset[str]:
    """The trials Tune had not ended when it was stopped, from the state it saved then (after
    saving it, Tune marks every live trial TERMINATED, like one it ended itself)."""
    saved = ExperimentAnalysis(experiment_dir).trials
    return frozenset(t.trial_id for t in saved if t.status not in ("TERMINATED", "ERROR"))


def catches_sigint() -> bool:
    """Whether Tune catches SIGINT in this thread (it does on the main thread, unless
    ``TUNE_DISABLE_SIGINT_HANDLER`` says not to): then a SIGINT stops a run cleanly."""
    return (threading.current_thread() is threading.main_thread()
            and not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0")))


def fit(tuner: tune.Tuner) -> tuple[ResultGrid, int | None]:
    """Tune's results, and the signal that stopped it early (SIGINT, SIGTERM), if any.

    Tune catches SIGINT itself (it saves its state and ends the run); SIGTERM, which Tune
    leaves to Python's default (death, nothing saved), is handed to Tune's SIGINT handler, so
    that `kill`, systemd and schedulers stop a search as cleanly as Ctrl-C. Before Tune's
    handler is in place (Tune restoring a search), a SIGTERM raises `Terminated`, as a Ctrl-C
    raises KeyboardInterrupt there. A second SIGTERM kills at once. Tune's handler puts the
    previous SIGINT handler back when it catches the signal, and only then (a contract that
    tests/test_confirm.py checks): that tells a stop."""
    before = signal.getsignal(signal.SIGINT)
    catching = catches_sigint()
    terminated: list[int] = []

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        tunes = signal.getsignal(signal.SIGINT)
        if terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        terminated.append(signum)
        if tunes is before or not callable(tunes):  # Tune is restoring, not running yet
            terminate()
        tunes(signal.SIGINT, frame)

    raise_swallowed_termination()  # a SIGTERM while the Tuner was being restored

    try:
        with _handling(signal.SIGTERM, on_sigterm, catching):
            grid = tuner.fit()
    except Terminated:
        forget_terminations()  # it got out: not one a callback swallowed
        raise
    stopped = catching and signal.getsignal(signal.SIGINT) is before
    restore_sigint(before)
    if terminated:
        return grid, signal.SIGTERM
    return grid, signal.SIGINT if stopped else None


def restore_sigint(before: Any) -> None:
    """Put back the SIGINT handler a Tune run found: Tune leaves its own installed when no
    signal came, and a Ctrl-C after the run (while the driver exports the winner, say) would
    then print "Stop signal received" and be ignored (issue 21)."""
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is not before and before is not None:
        signal.signal(signal.SIGINT, before)


@contextmanager
def _handling(signum: int, handler: Any, install: bool) -> Iterator[None]:
    previous = signal.signal(signum, handler) if install else None
    try:
        yield
    finally:
        if install:
            signal.signal(signum, previous)
