"""Tiny models of all three kinds on a 20k-token slice of Penn Treebank: a CPU demo of the
whole pipeline in minutes, and what the tests search. Not for results."""

from awd.config import MODELS
from spaces._common import NTASGD
from spaces.spec import Condition, SpaceSpec, float_param, int_param

SLICE = {"train_tokens": 20_000, "eval_tokens": 3_000, "batch_size": 20,
         "bptt": 35, "eval_batch_size": 10, "test_batch_size": 10}

SPACE = SpaceSpec(
    name="smoke",
    description="tiny AWD-LSTM / AWD-GRU / Zaremba models on a PTB slice (CPU demo, tests)",
    model=MODELS,
    dataset="ptb",
    max_epochs=3,
    grace_period=1,
    fixed={**NTASGD, **SLICE},
    conditions=(
        Condition(
            when={"model": ("zaremba",)},
            fixed={"preset": "small", "init_range": 0.1},
            parameters=(
                int_param("nhid", 32, 96, step=16),
                float_param("dropout", 0.0, 0.5),
                float_param("lr", 0.5, 2.0, log=True),
            ),
        ),
        Condition(
            when={"model": ("awd_lstm", "awd_gru")},
            fixed={"nlayers": 2, "clip": 0.25},
            parameters=(
                int_param("emsize", 16, 64, step=16),
                int_param("nhid", 32, 96, step=16),
                float_param("dropout", 0.0, 0.5),
                float_param("dropouth", 0.0, 0.4),
                float_param("dropouti", 0.0, 0.5),
                float_param("dropoute", 0.0, 0.2),
                float_param("wdrop", 0.0, 0.5),
                float_param("lr", 2.0, 20.0, log=True),
            ),
        ),
    ),
    warm_start={"model": "awd_lstm", "emsize": 32, "nhid": 64, "dropout": 0.4, "dropouth": 0.25,
                "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5, "lr": 10.0},
).to_space()

define = SPACE.define  # the tests' and benchmarks' variations of the smoke space start from it
