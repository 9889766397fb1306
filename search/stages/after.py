"""What a search does after its trials, with ``--cache-trials N`` and ``--ensemble K``: the
winner's continuous cache (`search.stages.cache`) and the ensemble of its models
(`search.stages.ensemble`). Called by the driver at the end of a search that ended (not one a
signal stopped), after the summary and the winner's registration; ``--resume`` runs it again,
which continues a killed stage (the cache's study keeps its trials; the ensemble, deterministic,
is recomputed and finds its registered version)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from awd.errors import CheckpointError, UserError, first_line
from search import schema
from search.options import SearchOptions
from search.results import TrialSummary
from search.stages.cache import CacheReport, StudyPlace, cache_stage
from search.stages.confirm import Confirmation
from search.stages.ensemble import Candidate, EnsembleReport, ensemble_stage
from search.state import SearchState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AfterTraining:
    cache: CacheReport | None
    ensemble: EnsembleReport | None


def candidates_of(trials: Sequence[TrialSummary], confirmation: Confirmation | None,
                  workdir: Path) -> list[Candidate]:
    """The completed trials and re-trainings, each exported from its last checkpoint (one that
    cannot be is left out, with a warning)."""
    from search.tune.trainable import export_best_model  # Ray

    found = [(t.trial_id, t.trial_id, t) for t in trials]
    if confirmation is not None:
        found += [(f"confirm-{t.trial_id}", t.trial_id, t) for t in confirmation.retrainings]
    out = []
    for name, trial_id, t in found:
        if t.status != schema.STATUS_COMPLETED or t.checkpoint is None:
            continue
        try:
            path = export_best_model(t.checkpoint, workdir / f"{name}.pt")
        except CheckpointError as e:
            log.warning("--ensemble: %s left out (%s)", name, first_line(e))
            continue
        out.append(Candidate(name, trial_id, path))
    return out


def after_training(opts: SearchOptions, state: SearchState, client: MlflowClient,
                   trials: Sequence[TrialSummary], best: TrialSummary | None,
                   runs: Mapping[str, Run], confirmation: Confirmation | None,
                   winner_file: Path | None, workdir: Path) -> AfterTraining:
    """The stages asked for; each logs its child run (see the stages' modules)."""
    if not opts.cache_trials and not opts.ensemble:
        return AfterTraining(None, None)
    study = StudyPlace(state.study_storage, state.study_name, opts.seed)
    cache = None
    if opts.cache_trials and (winner_file is None or best is None):
        log.warning("--cache-trials: the search has no exported winner; no cache")
    elif opts.cache_trials and winner_file is not None and best is not None:
        best_run = runs.get(best.trial_id)
        model_uri = client.get_run(state.parent_run_id).data.tags.get(schema.MODEL_URI)
        winner = winner_file
        cache = _stage("the cache", lambda: cache_stage(
            client, winner, experiment_id=state.experiment_id,
            parent_run_id=state.parent_run_id, trials=opts.cache_trials,
            model_run_id=best_run.info.run_id if best_run else None, model_uri=model_uri,
            study=study))
    ensemble = None
    if opts.ensemble:
        ensemble = _stage("the ensemble", lambda: ensemble_stage(
            client, candidates_of(trials, confirmation, workdir), opts.ensemble,
            experiment_id=state.experiment_id, parent_run_id=state.parent_run_id,
            space=opts.space, cache_trials=opts.cache_trials, workdir=workdir, study=study))
    return AfterTraining(cache, ensemble)


T = TypeVar("T")


def _stage(what: str, run: Callable[[], T]) -> T | None:
    """A stage that fails costs only its own result: the search's are written already. One
    line says why, and that --resume runs it again."""
    try:
        return run()
    except UserError as e:
        log.warning("%s after the search failed: %s (--resume runs it again)", what,
                    first_line(e))
    except Exception as e:  # MLflow, torch (out of memory ...): not the search's fault either
        log.warning("%s after the search failed: %s: %s (--resume runs it again)", what,
                    type(e).__name__, first_line(e))
    return None
