"""Zaremba et al. 2014 medium LSTM (2x650) on Penn Treebank, trained with NT-ASGD: dropout,
hidden/embedding size (tied in size: the embedding is nhid wide), init range and lr."""

from typing import Any

import optuna

from spaces._common import ZAREMBA_SEARCHED, fixed, paper_values, suggest_zaremba
from spaces._space import Space


def define(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    return {**fixed("zaremba", "ptb", "medium"), **suggest_zaremba(trial)}


SPACE = Space(
    name="zaremba_ptb",
    description="Zaremba medium LSTM on Penn Treebank: dropout, nhid (= embedding size), "
    "init range, lr",
    model="zaremba",
    dataset="ptb",
    define=define,
    warm_start=paper_values("zaremba", "ptb", ZAREMBA_SEARCHED, "medium"),
    max_epochs=39,
    grace_period=10,
)
