"""Hyperparameter importance with Optuna's evaluator (PED-ANOVA in Optuna 5).

The MLflow trials of a search become an in-memory Optuna study: each finished trial is added with
the params that vary across the group (distributions inferred from the observed values) and, as
its value, the lowest validation perplexity it reached.
"""

from __future__ import annotations

import logging
import warnings
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
from optuna.importance import PedAnovaImportanceEvaluator

from reports.load import ReportData
from reports.params import column_kind, parse_value

MIN_TRIALS = 5
OBJECTIVE = "lowest val_ppl reached by each finished (completed or stopped-early) trial"


@dataclass
class Importance:
    """Importances of one group of trials (a search, or one model within it)."""

    search: str
    model: str
    n_trials: int
    importances: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def label(self) -> str:
        return f"{self.search} · {self.model} ({self.n_trials})"


def distributions(params: list[dict[str, str]]) -> dict[str, BaseDistribution]:
    """A distribution per param that takes more than one value over ``params``."""
    names = sorted({k for p in params for k in p})
    dists: dict[str, BaseDistribution] = {}
    for name in names:
        raw = [p[name] for p in params if name in p]
        parsed = [parse_value(v) for v in raw]
        if len(set(map(str, parsed))) < 2:
            continue
        kind = column_kind(parsed)
        if kind == "int":
            dists[name] = IntDistribution(min(parsed), max(parsed))
        elif kind == "float":
            dists[name] = FloatDistribution(float(min(parsed)), float(max(parsed)))
        else:
            dists[name] = CategoricalDistribution(sorted(set(raw)))
    return dists


def _value(dist: BaseDistribution, raw: str) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return raw
    if isinstance(dist, IntDistribution):
        return int(parse_value(raw))
    return float(parse_value(raw))


def study_of(trials: pd.DataFrame) -> optuna.Study:
    """An in-memory study holding ``trials`` (rows with ``params`` and ``best_val_ppl``)."""
    params = list(trials["params"])
    dists = distributions(params)
    study = optuna.create_study(direction="minimize")
    for p, value in zip(params, trials["best_val_ppl"], strict=True):
        present = {k: d for k, d in dists.items() if k in p}
        study.add_trial(optuna.trial.create_trial(
            params={k: _value(d, p[k]) for k, d in present.items()},
            distributions=present, value=float(value)))
    return study


def evaluate(trials: pd.DataFrame, search: str, model: str) -> Importance:
    """Importances for one group, or a message saying why there are none."""
    trials = trials[trials["best_val_ppl"].notna()]
    result = Importance(search, model, len(trials))
    if len(trials) < MIN_TRIALS:
        result.message = f"needs >= {MIN_TRIALS} finished trials, has {len(trials)}"
        return result
    if not distributions(list(trials["params"])):
        result.message = "no parameter varies across these trials"
        return result
    optuna.logging.set_verbosity(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = study_of(trials)
        # The default top 10% is a single trial below 30 trials: widen it to about 3 trials.
        quantile = min(0.5, max(0.1, 3 / len(trials)))
        try:
            result.importances = optuna.importance.get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile))
        except Exception as e:  # the evaluator rejects some degenerate studies
            result.message = f"Optuna could not evaluate importances: {e}"
    return result


def importances(data: ReportData) -> list[Importance]:
    """Per search: all models together (when it has several), then each model."""
    out = []
    for _, search in data.searches.iterrows():
        finished = data.finished(search["search_key"])
        if finished.empty:
            continue
        models = sorted(finished["model"].unique())
        if len(models) > 1:
            out.append(evaluate(finished, search["label"], "all models"))
        for model in models:
            out.append(evaluate(finished[finished["model"] == model], search["label"], model))
    return out
