"""Tiny models of all three kinds on a 20k-token slice of Penn Treebank: a CPU demo of the
whole pipeline in minutes, and what the tests search. Not for results."""

from typing import Any

import optuna

from awd.config import MODELS
from spaces._common import fixed
from spaces._space import Space

SLICE = {"train_tokens": 20_000, "eval_tokens": 3_000, "batch_size": 20,
         "bptt": 35, "eval_batch_size": 10, "test_batch_size": 10}


def define(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    model = trial.suggest_categorical("model", MODELS)
    if model == "zaremba":
        sampled = {
            "nhid": trial.suggest_int("nhid", 32, 96, step=16),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "lr": trial.suggest_float("lr", 0.5, 2.0, log=True),
        }
        return {**fixed(model, "ptb", "small"), "init_range": 0.1, **SLICE, **sampled}
    sampled = {
        "emsize": trial.suggest_int("emsize", 16, 64, step=16),
        "nhid": trial.suggest_int("nhid", 32, 96, step=16),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "dropouth": trial.suggest_float("dropouth", 0.0, 0.4),
        "dropouti": trial.suggest_float("dropouti", 0.0, 0.5),
        "dropoute": trial.suggest_float("dropoute", 0.0, 0.2),
        "wdrop": trial.suggest_float("wdrop", 0.0, 0.5),
        "lr": trial.suggest_float("lr", 2.0, 20.0, log=True),
    }
    return {**fixed(model, "ptb"), "nlayers": 2, "clip": 0.25, **SLICE, **sampled}


SPACE = Space(
    name="smoke",
    description="tiny AWD-LSTM / AWD-GRU / Zaremba models on a PTB slice (CPU demo, tests)",
    model="mixed",
    dataset="ptb",
    define=define,
    warm_start={"model": "awd_lstm", "emsize": 32, "nhid": 64, "dropout": 0.4, "dropouth": 0.25,
                "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5, "lr": 10.0},
    max_epochs=3,
    grace_period=1,
)
