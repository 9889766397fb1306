"""Optuna's TPE behind Ray Tune, warm-started at the paper configuration.

Two gaps in `OptunaSearch` are closed here: ``points_to_evaluate`` is ignored with a
define-by-run space (ray#35319), so the paper point is enqueued on the study itself before Tune
sees it; and `OptunaSearch` tells Optuna COMPLETE for any trial with a last result, even one that
failed or was stopped by ASHA, so completion is re-classified as COMPLETE, PRUNED or FAIL.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from search import schema
from spaces import Space, get_space


class AWDOptunaSearch(OptunaSearch):
    """OptunaSearch that reports failed trials as FAIL and early-stopped ones as PRUNED."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial, study = self._ot_trials[trial_id], self.study()
        if error or not result or result.get(schema.DIVERGED):
            study.tell(ot_trial, state=TrialState.FAIL)
        elif result.get(schema.FINISHED):
            study.tell(ot_trial, result[self.metric], state=TrialState.COMPLETE)
        else:  # stopped by the scheduler: Optuna keeps its intermediate values
            study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def study(self) -> optuna.Study:
        """The Optuna study behind this searcher (set up when Tune hands it the metric)."""
        if self._ot_study is None:
            raise RuntimeError("the searcher has not been set up yet")
        return self._ot_study

    def tune_trial_id(self, number: int) -> str:
        """The Tune trial that ran Optuna trial ``number`` (0: the warm start)."""
        return next(tid for tid, t in self._ot_trials.items() if t.number == number)


@dataclass(frozen=True)
class SpaceConfig:
    """The define-by-run function Tune calls: a space (by name, so that it pickles into Tune's
    experiment state) with the search's overrides applied."""

    space: str
    overrides: dict[str, Any]

    def __call__(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        return get_space(self.space).config(trial, **self.overrides)


def make_searcher(
    space: Space, overrides: dict[str, Any], seed: int, study_name: str, concurrency: int
) -> ConcurrencyLimiter:
    """TPE (multivariate, grouped for conditional spaces, constant liar), seeded, with the paper
    configuration enqueued as the first trial."""
    with warnings.catch_warnings():  # `group` (for conditional spaces) is "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=sampler,
        direction="minimize" if space.mode == "min" else "maximize",
    )
    study.enqueue_trial(space.warm_start)

    searcher = AWDOptunaSearch(
        space=SpaceConfig(space.name, overrides),
        metric=space.metric,
        mode=space.mode,
        sampler=sampler,
        study_name=study_name,
        storage=storage,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)
