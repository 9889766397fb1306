"""Optuna's TPE behind Ray Tune, over a study kept where Optuna's own tools open it.

Gaps in `OptunaSearch` closed here: ``points_to_evaluate`` is ignored with a define-by-run space
(ray#35319), so the paper point (and configurations transferred from earlier searches) are
enqueued on the study itself before Tune sees it; `OptunaSearch` tells Optuna COMPLETE for any
trial with a last result, even one that failed or was stopped by ASHA, so completion is
re-classified as COMPLETE, PRUNED or FAIL; and intermediate values are reported per epoch (not
per Tune iteration, which restarts differ on).

Several objectives (``--objectives val_ppl,num_params``): the same study with one direction per
objective, all minimised, and the same TPE sampler, which Optuna runs as multi-objective TPE
(MOTPE): it learns from every completed trial, where NSGA-II would need generations of 50 trials
(its default population) that a search of tens of trials never reaches. Optuna takes no
intermediate values from a multi-objective trial, so ASHA's stops reach it only as PRUNED trials
without values: a trial ASHA stopped is never on the Pareto front (`study.best_trials` holds
COMPLETE trials only). ASHA itself stops on validation perplexity alone (the first objective):
a small model that learns slowly is stopped like any other.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from search import schema
from search.diskspace import trip_on
from search.options import SearchOptions
from search.study_storage import open_storage
from search.uris import sqlite_path, sqlite_uri
from spaces import Space


class AWDOptunaSearch(OptunaSearch):
    """OptunaSearch that reports every epoch's objective as an intermediate value (step =
    epoch), failed trials as FAIL and early-stopped ones as PRUNED: TPE then learns from the
    trials ASHA stops, through their last intermediate value."""

    def __init__(self, *args: Any, report_intermediate: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.report_intermediate = report_intermediate
        # ends the study could not take (its disk full), told on --resume: see `_tell`
        self._untold: dict[str, tuple[TrialState, list[float] | None]] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Tune's next configuration; the study trial records the Tune trial id, which is
        also the MLflow trial run's ``awdsearch.trial_id``."""
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(schema.OPTUNA_TUNE_TRIAL_ID, trial_id)
        return config

    @property
    def objectives(self) -> list[str]:
        """The result metrics the study minimises (one, or several)."""
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if (not self.report_intermediate or isinstance(self.metric, list)  # Optuna: none then
                or result.get(schema.DIVERGED)
                or schema.EPOCH not in result or self.metric not in result
                or trial_id in self._completed_trials or trial_id not in self._ot_trials
                or self._told(trial_id)):
            return
        with warnings.catch_warnings():  # an epoch re-run after a restore is kept once
            warnings.simplefilter("ignore", UserWarning)
            try:
                self._ot_trials[trial_id].report(float(result[self.metric]),
                                                 int(result[schema.EPOCH]))
            except Exception as e:  # a full disk stops the search; one value less for TPE
                if not trip_on(e):
                    raise

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if self._told(trial_id):
            self._completed_trials.add(trial_id)
            return
        values: list[float] | None = None
        if error or not result or result.get(schema.DIVERGED) or result.get(schema.FATAL):
            state = TrialState.FAIL
        elif result.get(schema.FINISHED):
            self.on_trial_result(trial_id, result)
            values, state = [float(result[m]) for m in self.objectives], TrialState.COMPLETE
        else:  # stopped by the scheduler: Optuna keeps its intermediate values
            # Tune hands the result that made ASHA stop the trial to on_trial_complete only
            # (not to on_trial_result): it is the pruned trial's last intermediate value.
            self.on_trial_result(trial_id, result)
            state = TrialState.PRUNED
        self._completed_trials.add(trial_id)
        self._tell(trial_id, state, values)

    def _tell(self, trial_id: str, state: TrialState, values: list[float] | None) -> None:
        """The study told a trial's end. A study whose disk is full stops the search
        (`search.diskspace.trip_on`); the end is kept in this searcher's state (which Tune
        saves) and told by the restored searcher of --resume."""
        try:
            self.study().tell(self._ot_trials[trial_id], None if values is None else
                              values if len(values) > 1 else values[0], state=state)
            self._untold.pop(trial_id, None)
        except Exception as e:
            if not trip_on(e):
                raise
            self._untold[trial_id] = (state, values)

    def _told(self, trial_id: str) -> bool:
        """Whether the study already has the trial's end: a driver killed after telling the
        study but before Tune's next snapshot ends the same trial again once resumed."""
        ot_trial = self._ot_trials[trial_id]
        return bool(ot_trial.study._storage.get_trial(ot_trial._trial_id).state.is_finished())

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore of a killed search: the study (in its storage) may hold trials asked
        after Tune's last snapshot of this searcher; Tune asks for them anew, so the orphans
        are marked failed instead of staying RUNNING in the study forever."""
        super().restore(checkpoint_path)
        if self._ot_study is None:
            return
        for trial_id, (state, values) in list(self._untold.items()):
            if trial_id in self._ot_trials and not self._told(trial_id):
                self._tell(trial_id, state, values)
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known:
                self._ot_study.tell(t.number, state=TrialState.FAIL)

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
    """The define-by-run function Tune calls: the space itself (it pickles into Tune's
    experiment state, so that a resumed search needs no space file) with the search's
    overrides applied."""

    space: Space
    overrides: dict[str, Any]

    def __call__(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        return self.space.config(trial, **self.overrides)


def default_study_storage(tracking_uri: str, workdir: Path | None = None) -> str:
    """Where a search keeps its Optuna study unless told: ``optuna.db`` beside the MLflow
    SQLite file, else in the working folder. A SQLite file is what ``optuna-dashboard`` and
    ``optuna.load_study`` open, during the search and after it."""
    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else workdir or Path.cwd()
    return sqlite_uri((folder / "optuna.db").resolve())


def _sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # `group` (for conditional spaces) is "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True)


def make_searcher(space: Space, overrides: dict[str, Any], seed: int, study_name: str,
                  concurrency: int, storage_url: str | None = None, sampler: str = "tpe",
                  warm_starts: Sequence[dict[str, Any]] = (),
                  report_intermediate: bool = True,
                  objectives: Sequence[str] = ()) -> ConcurrencyLimiter:
    """TPE (multivariate, grouped for conditional spaces, constant liar) or random, seeded,
    over a study kept in ``storage_url`` (in memory if None), with the paper configuration
    enqueued first and then ``warm_starts`` (configurations of earlier searches).
    ``objectives``: several result metrics, all minimised (default: the space's metric)."""
    metrics = list(objectives) or [space.metric]
    direction = "minimize" if space.mode == "min" else "maximize"
    directions = {"directions": ["minimize"] * len(metrics)} if len(metrics) > 1 \
        else {"direction": direction}
    storage: optuna.storages.BaseStorage = (open_storage(storage_url) if storage_url
                                            else optuna.storages.InMemoryStorage())
    # Optuna's INFO lines ("A new study created", then Ray's OptunaSearch "Using an existing
    # study" for the same one) say nothing the search's own summary does not
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        sampler=_sampler(sampler, seed),
        load_if_exists=True,
        **directions,
    )
    if not study.trials:  # a new study: the paper configuration, then the transferred ones
        study.enqueue_trial(space.warm_start)
        for params in warm_starts:
            study.enqueue_trial(params, skip_if_exists=True)
    searcher = AWDOptunaSearch(
        space=SpaceConfig(space, overrides),
        metric=metrics if len(metrics) > 1 else space.metric,
        mode=["min"] * len(metrics) if len(metrics) > 1 else space.mode,
        sampler=study.sampler,
        study_name=study_name,
        storage=storage,
        report_intermediate=report_intermediate,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=concurrency)


def searcher_for(opts: SearchOptions, study_storage: str | None, study_name: str,
                 concurrency: int,
                 warm_starts: Sequence[dict[str, Any]] = ()) -> ConcurrencyLimiter:
    """The searcher of a search with ``opts``: TPE (or random) over the space, every trial's
    config with the search's fixed values and epoch budget applied. The driver and the replayed
    searches of `benchmarks.replay` both build it here."""
    overrides = {**opts.fixed_values, "epochs": opts.epochs}
    return make_searcher(opts.space_spec, overrides, opts.seed, study_name, concurrency,
                         storage_url=study_storage, sampler=opts.sampler,
                         warm_starts=warm_starts,
                         report_intermediate=opts.report_intermediate,
                         objectives=opts.objective_metrics)
