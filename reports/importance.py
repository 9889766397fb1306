"""Hyperparameter importance per model, at a common budget, from each search's own Optuna study.

Source. A search whose parent run names its study (tags `search.schema.STUDY_STORAGE` and
`STUDY_NAME`) is read from that study (`reports.load.read_study`, read-only): each trial's
sampled params with their real distributions, its objective per epoch (the intermediate values:
best val ppl so far, step = epoch) and its state. Finished = COMPLETE (ran its whole budget) or
PRUNED (stopped by ASHA); FAIL, RUNNING and WAITING trials are left out. A search without a
readable study (older searches, trial runs without a parent search run) gets a reconstruction
from its MLflow trial runs, labelled as one wherever it is shown: the params that vary within a
model's trials, distributions guessed from the observed values, the objective per epoch from the
val_ppl history (its running minimum).

Study trial <-> MLflow run. The searcher records Tune's trial id on each study trial (user attr
`schema.OPTUNA_TUNE_TRIAL_ID`), and `match_runs` pairs the two by it. A pairing gives the trial
id, the model where the study has no ``model`` param and the parent's model tag is not one
model, and the per-epoch values of a trial the study has none for (a search run without
intermediate values). Nothing else depends on it.

Groups. Trials are split by model and each model is evaluated on its own params only (never
pooled over models whose params differ). A search of several models also gets a pooled view
over the params every pooled trial has with the same distribution (Optuna's intersection search
space), plus ``model``.

Budget. A trial ASHA stopped ran fewer epochs than one that completed: ranking their last values
together ranks budgets, not params. Each group is compared at its common budget: the largest
epoch that at least MIN_TRIALS of its finished trials reached (every one of them when the group
has fewer), each trial's best val ppl up to that epoch.

Evaluator. Optuna's fANOVA (a seeded random forest) on an in-memory study holding those
same-budget values with the real distributions. Chosen over PED-ANOVA, which compares the top
quantile of trials with the rest: with the few trials of a group (the top 10% is one trial below
30) it is mostly noise. On a simulated AWD space where only ``lr`` (and weakly ``dropout``)
matters, fANOVA ranked ``lr`` first in 77% of 10-trial and 100% of 20-trial samples, PED-ANOVA
in about 50% of both.

Optuna's own answer. Optuna's default evaluator (PED-ANOVA since Optuna 5, also
optuna-dashboard's default) is run on the same study as Optuna runs it
(`optuna.importance.get_param_importances(study)`): the COMPLETE trials' final values, the
best 10% of them against all of them, every param any of them sampled, pooled over models
(several objectives: the importance of reaching the Pareto front). The report
shows its ranking beside ours and says whether the two agree on the most important parameter,
and, when they do not, which of those differences the search has (`differences`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from awd.errors import first_line
from reports.load import ReportData, StudyRecord
from reports.params import column_kind
from search import schema
from search.results import parse_param

MIN_TRIALS = 5
POOLED = "all models"
MODEL = "model"
SOURCE_STUDY = "study"
SOURCE_MLFLOW = "mlflow"
EVALUATOR = "fANOVA"
OPTUNA_DEFAULT = "PED-ANOVA"
RELIABLE_TRIALS = 20  # fANOVA found the one param that mattered in 77% of 10-trial samples
OBJECTIVE = ("best val ppl up to the group's common budget: the largest epoch that at least "
             f"{MIN_TRIALS} of its finished (completed or stopped-early) trials reached, or all "
             "of them in a group of fewer")
FALLBACK = ("reconstructed from the MLflow params, not read from an Optuna study: searched "
            "params guessed as those that vary within a model's trials, distributions from the "
            "observed values")
_STATUS = {TrialState.COMPLETE: schema.STATUS_COMPLETED, TrialState.PRUNED: schema.STATUS_STOPPED}


@dataclass(frozen=True)
class Point:
    """One finished trial: its params and its objective per epoch (best val ppl so far)."""

    number: int
    model: str
    status: str
    params: dict[str, Any]
    distributions: dict[str, BaseDistribution]
    curve: dict[int, float]
    trial_id: str = ""

    @property
    def last_step(self) -> int:
        return max(self.curve, default=0)

    def value_at(self, step: int) -> float | None:
        """Best val ppl up to ``step``; None if the trial stopped before it."""
        seen = [s for s in self.curve if s <= step]
        return self.curve[max(seen)] if seen and self.last_step >= step else None


@dataclass
class Group:
    """One model's finished trials (or all models' for the pooled view), compared at one step.

    searched: every param any of its trials sampled (the slices); params: those evaluated (and
    drawn as parallel axes): the ones every trial has with one distribution; left_out: the
    others with the reason."""

    search: str
    model: str
    points: list[Point]
    searched: dict[str, BaseDistribution] = field(default_factory=dict)
    params: dict[str, BaseDistribution] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    step: int | None = None
    importances: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def compared(self) -> list[Point]:
        """The trials that reached the common step."""
        if self.step is None:
            return []
        return [p for p in self.points if p.value_at(self.step) is not None]

    def value(self, point: Point) -> float:
        assert self.step is not None
        value = point.value_at(self.step)
        assert value is not None, "only compared trials have a value"
        return value

    @property
    def budget(self) -> str:
        if self.step is None:
            return f"{len(self.points)} finished trials"
        return f"epoch {self.step}, {len(self.compared)} of {len(self.points)} trials"

    @property
    def label(self) -> str:
        return f"{self.model} ({self.budget})"


@dataclass
class Analysis:
    """One search: where its trials come from, and its groups (pooled first)."""

    search: str
    source: str
    origin: str
    groups: list[Group] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    optuna_default: dict[str, float] = field(default_factory=dict)
    optuna_missing: str = ""  # why Optuna's own answer is empty
    comparison: str = ""

    @property
    def models(self) -> list[Group]:
        return [g for g in self.groups if g.model != POOLED]

    @property
    def main(self) -> Group | None:
        """The group that speaks for the whole search: the pooled one, else its one model."""
        return self.groups[0] if self.groups else None

    def reliability(self) -> str:
        """What the importances rest on, and how far to trust a ranking of so few trials."""
        ranked = [g for g in self.groups if g.importances]
        if not ranked:
            return ""
        rests = "; ".join(f"{g.model}: {len(g.compared)} trials at epoch {g.step}"
                          for g in ranked)
        few = [g.model for g in ranked if len(g.compared) < RELIABLE_TRIALS]
        if not few:
            return f"Rests on {rests}."
        return (f"Rests on {rests}. A hint, not a finding, below {RELIABLE_TRIALS} trials "
                f"({', '.join(few)}): on a simulated AWD space where only lr mattered, "
                f"{EVALUATOR} ranked it first in 77% of 10-trial samples and in all 20-trial "
                "ones.")

    def left_out_line(self) -> str:
        """Every param a group left out, folded: one entry per reason, its params and groups."""
        by_why: dict[str, dict[str, list[str]]] = {}
        for g in self.groups:
            for name, why in g.left_out.items():
                by_why.setdefault(why, {}).setdefault(name, []).append(g.model)
        if not by_why:
            return ""
        parts = []
        for why, names in by_why.items():
            where = sorted({"the pooled view" if m == POOLED else m
                            for ms in names.values() for m in ms})
            parts.append(f"{', '.join(names)} ({why}; from {', '.join(where)})")
        return "Left out: " + "; ".join(parts) + "."


# --- the common budget and the evaluation -------------------------------------------------
def common_step(points: list[Point], min_trials: int = MIN_TRIALS) -> int | None:
    """The largest epoch at least ``min_trials`` of ``points`` reached (all of them if fewer)."""
    reached = sorted((p.last_step for p in points if p.curve), reverse=True)
    if not reached:
        return None
    return reached[min(min_trials, len(reached)) - 1]


def _fanova(group: Group) -> dict[str, float]:
    """Optuna's fANOVA over an in-memory study of the group's values at its common step."""
    from optuna.importance import FanovaImportanceEvaluator  # scikit-learn: 1.3 s, here only

    study = optuna.create_study()
    for p in group.compared:
        params = {n: p.model if n == MODEL else p.params[n] for n in group.params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=group.params,
                                                  value=group.value(p)))
    return optuna.importance.get_param_importances(
        study, evaluator=FanovaImportanceEvaluator(seed=0), params=list(group.params))


def evaluate(group: Group) -> Group:
    """Set the group's common step and its importances, or a message saying why not."""
    group.step = common_step(group.points)
    if len(group.points) < MIN_TRIALS:
        group.message = f"needs >= {MIN_TRIALS} finished trials, has {len(group.points)}"
    elif not group.params:
        group.message = "no searched parameter that every trial has"
    elif len({round(group.value(p), 9) for p in group.compared}) < 2:
        group.message = f"every trial has the same value at epoch {group.step}"
    else:
        with _quiet_optuna():
            try:
                group.importances = _fanova(group)
            except Exception as e:  # the evaluator rejects some degenerate studies
                group.message = f"Optuna could not evaluate importances: {e}"
    return group


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's study-creation lines and its evaluators' warnings off: the report says what
    they would (`Group.message`, `Analysis.optuna_missing`)."""
    optuna.logging.set_verbosity(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- Optuna's own answer ---------------------------------------------------------------------
def optuna_default(trials: tuple[FrozenTrial, ...], directions: tuple[str, ...] = ("minimize",)
                   ) -> tuple[dict[str, float], str]:
    """`optuna.importance.get_param_importances` with Optuna's default evaluator on a copy of
    the study (in memory, with its directions: the stored one is only read), as Optuna runs it
    (a study of several objectives: the importance of reaching its Pareto front); or {} and
    why not."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return {}, f"{len(complete)} completed trial(s), it needs 2"
    with _quiet_optuna():
        study = optuna.create_study(directions=[
            optuna.study.StudyDirection[d.upper()] for d in directions])
        study.add_trials(complete)
        try:
            found = optuna.importance.get_param_importances(study)
        except Exception as e:  # the evaluator rejects some degenerate studies
            return {}, f"Optuna could not evaluate the study: {first_line(e)}"
    return {k: float(v) for k, v in found.items()}, ""


def _top(importances: dict[str, float]) -> str:
    """The most important parameter; "" when none stands out (a tie at the top)."""
    ranked = sorted(importances.values(), reverse=True)
    if not ranked or (len(ranked) > 1 and math.isclose(ranked[0], ranked[1], abs_tol=1e-9)):
        return ""
    return max(importances, key=lambda n: importances[n])


def differences(analysis: Analysis, trials: tuple[FrozenTrial, ...]) -> list[str]:
    """What Optuna's default call does differently from ours on this search's study."""
    main = analysis.main
    finished = [t for t in trials if t.state in _STATUS]
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    out = []
    if len(complete) < len(finished):
        out.append(f"it reads only the {len(complete)} completed trials' final values (the "
                   f"{len(finished) - len(complete)} ASHA stopped are left out)")
    out.append(f"it sets the best 10% of them ({max(1, math.ceil(0.1 * len(complete)))}) "
               f"against all of them, where {EVALUATOR} fits a model of every value")
    if main is not None:
        ranked = [n for n in analysis.optuna_default if n in main.left_out]
        if ranked:
            out.append("it ranks " + ", ".join(f"{n}, which ours leaves out of {main.model} "
                                               f"({main.left_out[n]})" for n in ranked))
        if main.step is not None and complete:
            last = max((max(t.intermediate_values, default=0) for t in complete), default=0)
            if main.step != last:
                out.append(f"ours compares trials at epoch {main.step}, where it uses each "
                           f"completed trial's value at its end (epoch {last})")
    return out


def compare(analysis: Analysis, trials: tuple[FrozenTrial, ...]) -> str:
    """One line: do Optuna's default evaluator and ours agree on the most important parameter
    of the search (pooled, else its one model), and why not."""
    theirs, main = analysis.optuna_default, analysis.main
    if not theirs:
        return (f"Optuna's default evaluator ({OPTUNA_DEFAULT}) has nothing to rank: "
                f"{analysis.optuna_missing}.")
    first = _top(theirs)
    if not first:
        return (f"Optuna's default evaluator ({OPTUNA_DEFAULT}) sets no parameter first (a tie "
                "at the top): nothing to compare.")
    if main is None or not _top(main.importances):
        return (f"Optuna's default evaluator ({OPTUNA_DEFAULT}) ranks {first} first; "
                f"{EVALUATOR} here has no ranking to set beside it.")
    ours = _top(main.importances)
    if ours == first:
        return (f"Optuna's default evaluator ({OPTUNA_DEFAULT}, also optuna-dashboard's) "
                f"agrees on the most important parameter of {main.model}: {ours}.")
    why = differences(analysis, trials)
    return (f"Optuna's default evaluator ({OPTUNA_DEFAULT}, also optuna-dashboard's) "
            f"ranks {first} first where {EVALUATOR} here ranks {ours} first ({main.model}). "
            f"Why they differ: {'; '.join(why)}.")


# --- which params a group compares ----------------------------------------------------------
def _select(points: list[Point], fixed: tuple[str, ...], pooled: bool,
            ) -> tuple[dict[str, BaseDistribution], dict[str, BaseDistribution], dict[str, str]]:
    """(searched, evaluated, left out with why) over the points' own distributions."""
    searched: dict[str, BaseDistribution] = {}
    params: dict[str, BaseDistribution] = {}
    left_out: dict[str, str] = {}
    names = list(dict.fromkeys(n for p in points for n in p.distributions))
    for name in names:
        dists = [p.distributions[name] for p in points if name in p.distributions]
        if name == MODEL and not pooled:
            continue
        if name in fixed:
            left_out[name] = "fixed by --set: the sampled value was not used"
            continue
        if all(d.single() for d in dists):
            continue
        searched[name] = dists[0]
        if len(dists) < len(points):
            left_out[name] = ("not every model samples it" if pooled
                              else "conditional: not every trial samples it")
        elif any(d != dists[0] for d in dists):
            left_out[name] = ("its range differs between models" if pooled
                              else "its range differs between trials")
        else:
            params[name] = dists[0]
    if pooled and MODEL not in params:
        params[MODEL] = CategoricalDistribution(sorted({p.model for p in points}))
    return searched, params, left_out


def _split(points: list[Point]) -> list[tuple[str, list[Point]]]:
    """(model, its trials) per model, after (all models, every trial) when there are several."""
    models = sorted({p.model for p in points})
    return ([(POOLED, points)] if len(models) > 1 else []) + [
        (m, [p for p in points if p.model == m]) for m in models]


# --- from the study -------------------------------------------------------------------------
def match_runs(trials: list[FrozenTrial], runs: pd.DataFrame) -> dict[int, pd.Series]:
    """Study trial number -> its MLflow trial run, by the Tune trial id the searcher records on
    each study trial (`schema.OPTUNA_TUNE_TRIAL_ID`); a trial without one has no run."""
    by_id = {str(run["trial_id"]): run for _, run in runs.iterrows() if run["trial_id"]}
    matched: dict[int, pd.Series] = {}
    for trial in trials:
        run = by_id.get(str(trial.user_attrs.get(schema.OPTUNA_TUNE_TRIAL_ID, "")))
        if run is not None:
            matched[trial.number] = run
    return matched


def _mlflow_curve(data: ReportData, run_id: str) -> dict[int, float]:
    """A run's best val ppl so far per epoch: the running minimum of its val_ppl history."""
    history = data.history[data.history["run_id"] == run_id].sort_values("epoch")
    history = history[history["val_ppl"].notna()]
    return dict(zip(history["epoch"].astype(int), history["val_ppl"].cummin().astype(float),
                    strict=True))


def _study_points(data: ReportData, search: pd.Series, record: StudyRecord,
                  notes: list[str]) -> list[Point]:
    runs = data.trials(search["search_key"])
    matched = match_runs(list(record.trials), runs)
    fixed_model = search["model"] if search["model"] not in ("", "mixed") else ""
    points, no_values, unknown = [], 0, 0
    for trial in record.trials:
        if trial.state not in _STATUS:
            continue
        run = matched.get(trial.number)
        model = str(trial.params.get(MODEL) or fixed_model
                    or (run["model"] if run is not None else ""))
        curve = {int(s): float(v) for s, v in trial.intermediate_values.items()
                 if math.isfinite(v)}
        if not curve and run is not None:
            curve = _mlflow_curve(data, run["run_id"])
        if (not curve and trial.state == TrialState.COMPLETE and trial.value is not None
                and not math.isnan(search["max_epochs"])):
            curve = {int(search["max_epochs"]): float(trial.value)}
        if not curve:
            no_values += 1
            continue
        if not model:
            unknown += 1
            continue
        points.append(Point(trial.number, model, _STATUS[trial.state], dict(trial.params),
                            dict(trial.distributions), curve,
                            run["trial_id"] if run is not None else ""))
    finished = sum(t.state in _STATUS for t in record.trials)
    notes.append(f"{finished} finished trials in the study; {len(matched)} of its "
                 f"{len(record.trials)} trials paired with an MLflow trial run")
    if no_values:
        notes.append(f"{no_values} finished trial(s) with no value per epoch left out")
    if unknown:
        notes.append(f"{unknown} finished trial(s) of unknown model left out")
    return points


# --- reconstructed from MLflow (no study) ---------------------------------------------------
def guess_distributions(params: list[dict[str, Any]]) -> dict[str, BaseDistribution]:
    """A distribution per param that takes more than one value over ``params`` (parsed
    values), spanning the observed values."""
    dists: dict[str, BaseDistribution] = {}
    for name in dict.fromkeys(k for p in params for k in p):
        values = [p[name] for p in params if name in p]
        if len({str(v) for v in values}) < 2:
            continue
        kind = column_kind(values)
        if kind == "int":
            dists[name] = IntDistribution(min(values), max(values))
        elif kind == "float":
            dists[name] = FloatDistribution(float(min(values)), float(max(values)))
        else:
            dists[name] = CategoricalDistribution(sorted(set(values), key=str))
    return dists


def _mlflow_points(data: ReportData, search: pd.Series) -> list[Point]:
    """The search's finished trial runs with the params that vary within one model's runs."""
    finished = data.finished(search["search_key"])
    parsed = [{k: parse_param(v) for k, v in p.items() if k != "gpus_per_trial"}
              for p in finished["params"]]
    models = list(finished["model"])
    searched = {n for m in set(models) for n in guess_distributions(
        [p for p, pm in zip(parsed, models, strict=True) if pm == m])}
    points = []
    for i, (params, (_, run)) in enumerate(zip(parsed, finished.iterrows(), strict=True)):
        curve = _mlflow_curve(data, run["run_id"])
        if not curve and not math.isnan(run[schema.BEST_VAL_PPL]):
            epochs = run["epochs_run"]
            curve = {int(epochs) if not math.isnan(epochs) else 1: float(run[schema.BEST_VAL_PPL])}
        if curve:
            points.append(Point(i, run["model"], run["status"],
                                {n: v for n, v in params.items() if n in searched}, {}, curve,
                                run["trial_id"]))
    return points


def _mlflow_group(search: str, model: str, points: list[Point]) -> Group:
    """A group of the reconstruction: distributions guessed from its own trials' values."""
    guessed = guess_distributions([p.params for p in points])
    pooled = model == POOLED
    if pooled:
        guessed[MODEL] = CategoricalDistribution(sorted({p.model for p in points}))
    points = [Point(p.number, p.model, p.status, p.params,
                    {n: d for n, d in guessed.items() if n in p.params or n == MODEL}, p.curve,
                    p.trial_id) for p in points]
    params = {n: d for n, d in guessed.items()
              if n == MODEL or all(n in p.params for p in points)}
    left_out = {n: "not every trial has it" for n in guessed if n not in params}
    searched = {n: d for n, d in guessed.items() if n != MODEL}
    return Group(search, model, points, searched, params, left_out)


# --- all searches ---------------------------------------------------------------------------
def analyse(data: ReportData) -> list[Analysis]:
    """Per search: its trials from its study (or reconstructed), grouped and evaluated."""
    out = []
    for _, search in data.searches.iterrows():
        record = data.studies.get(search["search_key"])
        if record is not None and not record.error:
            analysis = Analysis(search["label"], SOURCE_STUDY,
                                f"Optuna study {record.name!r} in {record.storage}")
            points = _study_points(data, search, record, analysis.notes)
            for model, members in _split(points):
                searched, params, left_out = _select(members, tuple(search["fixed"]),
                                                     model == POOLED)
                analysis.groups.append(Group(search["label"], model, members, searched, params,
                                             left_out))
        else:
            why = ("its study could not be read" if record is not None
                   else "the search run names none" if search["run_id"] else
                   "trial runs without a search run")
            analysis = Analysis(search["label"], SOURCE_MLFLOW, f"{FALLBACK} ({why})")
            analysis.groups = [_mlflow_group(search["label"], model, members)
                               for model, members in _split(_mlflow_points(data, search))]
        for group in analysis.groups:
            evaluate(group)
        if record is not None and not record.error and analysis.groups:
            analysis.optuna_default, analysis.optuna_missing = optuna_default(
                record.trials, record.directions)
            analysis.comparison = compare(analysis, record.trials)
        if analysis.groups:
            out.append(analysis)
    return out
