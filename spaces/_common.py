"""Parameter groups shared by several spaces; ranges contain the paper values.

Ranges follow the reference code's tuning history: the published AWD values were re-tuned
between code versions (dropouth 0.3 vs 0.25, dropouti 0.4 vs 0.65), so each range spans both.
"""

from __future__ import annotations

from typing import Any

import optuna

from awd.config import preset
from spaces._space import Space


def suggest_awd(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """AWD-LSTM / AWD-GRU: the five dropouts, sizes, lr, AR/TAR and NT-ASGD's patience."""
    return {
        "dropout": trial.suggest_float("dropout", 0.2, 0.6),
        "dropouth": trial.suggest_float("dropouth", 0.1, 0.45),
        "dropouti": trial.suggest_float("dropouti", 0.2, 0.7),
        "dropoute": trial.suggest_float("dropoute", 0.0, 0.2),
        "wdrop": trial.suggest_float("wdrop", 0.2, 0.7),
        "emsize": trial.suggest_int("emsize", 200, 800, step=50),
        "nhid": trial.suggest_int("nhid", 600, 1500, step=50),
        "lr": trial.suggest_float("lr", 10.0, 40.0),
        "alpha": trial.suggest_float("alpha", 0.0, 3.0),
        "beta": trial.suggest_float("beta", 0.0, 2.0),
        "nonmono": trial.suggest_int("nonmono", 3, 8),
    }


def suggest_zaremba(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Zaremba's LSTM: one dropout on all non-recurrent connections; its embedding size is nhid
    (untied), so searching nhid searches the embedding size."""
    return {
        "dropout": trial.suggest_float("dropout", 0.3, 0.7),
        "nhid": trial.suggest_int("nhid", 400, 1000, step=50),
        "init_range": trial.suggest_float("init_range", 0.02, 0.1),
        "lr": trial.suggest_float("lr", 0.5, 2.0),
    }


AWD_SEARCHED = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop", "emsize", "nhid", "lr",
                "alpha", "beta", "nonmono")
ZAREMBA_SEARCHED = ("dropout", "nhid", "init_range", "lr")


def paper_values(model: str, dataset: str, names: tuple[str, ...], size: str = "") -> dict:
    """The preset's values of the searched parameters: the warm start of a space."""
    flat = preset(model, dataset, size).to_flat()
    return {name: flat[name] for name in names}


def fixed(model: str, dataset: str, size: str = "") -> dict[str, Any]:
    """What a space does not search: the model, its data, its preset; every trial of every
    space trains with NT-ASGD (the Zaremba preset alone would use its SGD schedule)."""
    return {"model": model, "dataset": dataset, "preset": size, "optimizer": "ntasgd"}


DATASET_TITLES = {"ptb": "Penn Treebank", "wikitext-2": "WikiText-2"}
MODEL_TITLES = {"awd_lstm": "AWD-LSTM", "awd_gru": "AWD-GRU", "zaremba": "Zaremba LSTM"}


def awd_space(name: str, model: str, dataset: str, max_epochs: int = 100,
              grace_period: int = 30) -> Space:
    """A space over one AWD model on one dataset, warm-started at the paper configuration."""

    def define(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        return {**fixed(model, dataset), **suggest_awd(trial)}

    return Space(
        name=name,
        description=f"{MODEL_TITLES[model]} on {DATASET_TITLES[dataset]}: dropouts, emsize, "
        "nhid, lr, AR/TAR, nonmono",
        model=model,
        dataset=dataset,
        define=define,
        warm_start=paper_values(model, dataset, AWD_SEARCHED),
        max_epochs=max_epochs,
        grace_period=grace_period,
    )
