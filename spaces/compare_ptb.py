"""The three models on Penn Treebank in one search: the model is a categorical choice and each
model's parameters are sampled only when it is chosen (Optuna's conditional define-by-run)."""

from typing import Any

import optuna

from awd.config import MODELS
from spaces._common import (
    AWD_SEARCHED,
    fixed,
    paper_values,
    suggest_awd,
    suggest_zaremba,
)
from spaces._space import Space


def define(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    model = trial.suggest_categorical("model", MODELS)
    if model == "zaremba":
        return {**fixed(model, "ptb", "medium"), **suggest_zaremba(trial)}
    return {**fixed(model, "ptb"), **suggest_awd(trial)}


SPACE = Space(
    name="compare_ptb",
    description="AWD-LSTM vs AWD-GRU vs Zaremba on Penn Treebank (model is a choice)",
    model="mixed",
    dataset="ptb",
    define=define,
    warm_start={"model": "awd_lstm", **paper_values("awd_lstm", "ptb", AWD_SEARCHED)},
    max_epochs=100,
    grace_period=30,
)
