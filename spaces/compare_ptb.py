"""The three models on Penn Treebank in one search: the model is a categorical choice and each
model's parameters are sampled only when it is chosen (Optuna's conditional define-by-run)."""

from awd.config import MODELS
from spaces._common import AWD_PARAMS, NTASGD, ZAREMBA_PARAMS, paper_values
from spaces.spec import Condition, SpaceSpec

SPACE = SpaceSpec(
    name="compare_ptb",
    description="AWD-LSTM vs AWD-GRU vs Zaremba on Penn Treebank (model is a choice)",
    model=MODELS,
    dataset="ptb",
    max_epochs=100,
    grace_period=30,
    fixed=dict(NTASGD),
    conditions=(
        Condition(when={"model": ("zaremba",)}, fixed={"preset": "medium"},
                  parameters=ZAREMBA_PARAMS),
        Condition(when={"model": ("awd_lstm", "awd_gru")}, parameters=AWD_PARAMS),
    ),
    warm_start={"model": "awd_lstm", **paper_values("awd_lstm", "ptb", AWD_PARAMS)},
).to_space()
