"""The search-efficiency benchmark's space: small AWD-LSTM and AWD-GRU models on a 60k-token
slice of Penn Treebank, 10 epochs each. Sized so that a few hundred configurations train in
a few hours on 2 CPU cores, and so that what is searched (learning rate, sizes, dropouts)
moves validation perplexity far more than the training seed does (`benchmarks.curves`
measures both). Not for results: for comparing search strategies on real learning curves."""

from spaces._common import NTASGD
from spaces.spec import SpaceSpec, float_param, int_param

SLICE = {"train_tokens": 60_000, "eval_tokens": 10_000, "batch_size": 20, "bptt": 35,
         "eval_batch_size": 10, "test_batch_size": 10, "nlayers": 2, "clip": 0.25, "seed": 1}

SPACE = SpaceSpec(
    name="bench_ptb",
    description="small AWD-LSTM / AWD-GRU on a 60k-token PTB slice, 10 epochs: the "
    "search-efficiency benchmark's space (benchmarks.curves)",
    model=("awd_lstm", "awd_gru"),
    dataset="ptb",
    max_epochs=10,
    grace_period=1,
    fixed={**NTASGD, **SLICE},
    parameters=(
        int_param("emsize", 16, 128, log=True),
        int_param("nhid", 32, 256, log=True),
        float_param("dropout", 0.0, 0.6),
        float_param("dropouth", 0.0, 0.5),
        float_param("dropouti", 0.0, 0.6),
        float_param("dropoute", 0.0, 0.3),
        float_param("wdrop", 0.0, 0.6),
        float_param("lr", 1.0, 60.0, log=True),
    ),
    # Not a tuned configuration: an ordinary first guess (the AWD-LSTM recipe's dropouts at
    # small sizes and lr 10; about the table's 35th percentile), so that what a replayed search
    # finds beyond its first trial is the strategy's doing.
    warm_start={"model": "awd_lstm", "emsize": 32, "nhid": 64, "dropout": 0.4,
                "dropouth": 0.25, "dropouti": 0.4, "dropoute": 0.1, "wdrop": 0.5, "lr": 10.0},
).to_space()
