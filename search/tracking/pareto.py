"""A multi-objective search's Pareto front (``--objectives``), from Optuna into MLflow.

The front is Optuna's own: `optuna.Study.best_trials` (COMPLETE trials no other beats on every
objective; trials ASHA stopped are PRUNED and never on it, `search.tune.searcher`). Each trial run
of the search is tagged ``awdsearch.pareto`` "true" or "false" (again at each end: a resumed
search's front can change), and the parent lists the front's trial ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search import schema


def front_trial_ids(storage: str, study_name: str) -> list[str]:
    """The Tune (= MLflow) trial ids of the study's Pareto front, best first by the first
    objective."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    best = sorted(study.best_trials, key=lambda t: tuple(t.values))
    return [str(t.user_attrs[schema.OPTUNA_TUNE_TRIAL_ID]) for t in best
            if schema.OPTUNA_TUNE_TRIAL_ID in t.user_attrs]


def tag_front(client: MlflowClient, parent_run_id: str, runs: Mapping[str, Run],
              front: list[str]) -> None:
    """Every trial run tagged on or off the front; the parent lists the front."""
    on = set(front)
    for trial_id, run in runs.items():
        client.set_tag(run.info.run_id, schema.PARETO, str(trial_id in on).lower())
    client.set_tag(parent_run_id, schema.PARETO_TRIALS, json.dumps(front))
