"""Re-trainings after a search, as a second Tune run: what ``--confirm-top`` and ``--ablate`` share.

Each stage runs a grid of entries ``{"run": flat config, ...}`` under one Tune config key, in its
own experiment folder ``<experiment><suffix>`` beside the search's, with a state file naming the
search (parent run) it belongs to. The runs are child runs of the search's parent with the
stage's role; no scheduler stops them (the full epoch budget). A stage killed half-way continues
on ``--resume`` (`tune.Tuner.restore`: finished runs are kept, unfinished ones continue from their
last checkpoint, into the same MLflow runs).

Ray-free at import; Ray is imported when a stage runs.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.tracking import MlflowClient

from search import schema, storage
from search.errors import SearchError
from search.options import SearchOptions
from search.results import TrialSummary
from search.tracking.store import child_runs, close_open_trials
from search.trust import verified

log = logging.getLogger(__name__)

Unwrap = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, str]]]


@dataclass(frozen=True)
class Stage:
    """One kind of re-training: where it lives, how its runs are named and tagged."""

    what: str  # "the confirmation": in messages
    key: str  # the Tune config key of an entry
    suffix: str  # its Tune experiment: "<experiment><suffix>"
    state_file: str  # in that folder: whose stage it is, what it plans
    role: str  # its MLflow runs' role
    trainable: Callable[[dict[str, Any]], None]  # module-level: Tune pickles it by reference
    unwrap: Unwrap  # an entry's run config and tags (`search.tune.callback.Unwrap`)
    trial_name: Callable[[Any], str]  # a Tune trial's name and folder


def experiment_dir(opts: SearchOptions, stage: Stage) -> str:
    return storage.join(opts.storage_path, opts.experiment_name + stage.suffix)


def saved_plan(opts: SearchOptions, stage: Stage) -> dict[str, Any] | None:
    """The state file of this search's stage, if one was started."""
    text = storage.read_text(storage.join(experiment_dir(opts, stage), stage.state_file))
    try:
        return dict(json.loads(text)) if text else None
    except (ValueError, TypeError):
        return None


def _owner(opts: SearchOptions, stage: Stage) -> str | None:
    saved = saved_plan(opts, stage)
    return str(saved.get("parent_run_id")) if saved and "parent_run_id" in saved else None


def resumable(opts: SearchOptions, stage: Stage, parent_run_id: str) -> bool:
    """Whether this search's stage was started and can be continued."""
    from ray import tune

    return (tune.Tuner.can_restore(experiment_dir(opts, stage))
            and _owner(opts, stage) == parent_run_id)


def entry_run(stage: Stage) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda config: dict(config[stage.key]["run"])


def retrain(stage: Stage, opts: SearchOptions, client: MlflowClient,
            plan: Callable[[], tuple[list[dict[str, Any]], dict[str, Any]] | None], *,
            tracking_uri: str, experiment_id: str, parent_run_id: str, cpus: float, gpus: float,
            concurrency: int) -> tuple[list[TrialSummary], list[dict[str, Any]]] | None:
    """Run the stage's grid (``plan()``: its entries and what its state file records; None:
    nothing to run), or continue the one saved for this search. Returns the runs as trial
    summaries and their entries (in the same order), or None when there was nothing to run or
    MLflow is away (``--resume`` writes the rest). Call it in the search's Ray session."""
    from ray import tune

    from search.tune.callback import MLflowTrialLogger, close_all
    from search.tune.console import SearchConsole, quiet_ray, quiet_trainable
    from search.tune.grid import summarize
    from search.tune.session import restore_sigint
    from search.tune.signing import StateSigner

    where = experiment_dir(opts, stage)
    quiet_ray()
    trainable = tune.with_resources(quiet_trainable(stage.trainable), {"cpu": cpus, "gpu": gpus})
    if tune.Tuner.can_restore(where):
        if _owner(opts, stage) != parent_run_id:
            raise SearchError(f"{where} holds {stage.what} of another search; move it away or "
                              "pass another --experiment")
        log.info("continuing %s saved at %s", stage.what, where)
        signer = StateSigner(where)
        verified(where)  # Tune's files authenticated before Tune reads them (`search.trust`)
        tuner = tune.Tuner.restore(where, trainable, resume_unfinished=True, resume_errored=False)
    else:
        planned = plan()
        if planned is None:
            return None
        entries, record = planned
        storage.write_text(storage.join(where, stage.state_file),
                           json.dumps({"parent_run_id": parent_run_id, **record}, indent=2))
        signer = StateSigner(where)
        logger = MLflowTrialLogger(tracking_uri, experiment_id, parent_run_id, opts.space,
                                   {"gpus_per_trial": gpus}, role=stage.role,
                                   unwrap=stage.unwrap, experiment_dir=where)
        tuner = tune.Tuner(
            trainable,
            param_space={stage.key: tune.grid_search(entries)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True,
                                        trial_name_creator=stage.trial_name,
                                        trial_dirname_creator=stage.trial_name),
            run_config=tune.RunConfig(
                name=opts.experiment_name + stage.suffix, storage_path=opts.storage_path,
                callbacks=[logger, SearchConsole(schema.BEST_VAL_PPL, "min", stopper=stage.what),
                           signer],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                sync_config=tune.SyncConfig(sync_artifacts=True),  # the runs' logs
                verbose=0))
    signer.sign_changed()  # tuner.pkl, before a kill can leave it unsigned
    before = signal.getsignal(signal.SIGINT)
    try:
        grid = tuner.fit()
    finally:
        restore_sigint(before)
        signer.sign_changed()
    summaries = summarize(grid, run_config=entry_run(stage))
    entries = [dict((grid[i].config or {})[stage.key]) for i in range(len(summaries))]
    if close_all(timeout=120):
        log.warning("MLflow unreachable: %s's summary is written on --resume", stage.what)
        return None
    close_open_trials(client, child_runs(client, experiment_id, parent_run_id), summaries)
    return summaries, entries


def records(summaries: Sequence[TrialSummary], entries: Sequence[dict[str, Any]],
            gpus: float) -> list[dict[str, Any]]:
    """Each run's entry (without its run config), last metrics, status and GPUs."""
    return [{**{k: v for k, v in e.items() if k != "run"}, **t.metrics, "status": t.status,
             "gpus_per_trial": gpus} for t, e in zip(summaries, entries, strict=True)]
