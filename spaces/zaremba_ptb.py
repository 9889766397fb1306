"""Zaremba et al. 2014 medium LSTM (2x650) on Penn Treebank, trained with NT-ASGD: dropout,
hidden/embedding size (tied in size: the embedding is nhid wide), init range and lr."""

from spaces._common import NTASGD, ZAREMBA_PARAMS, paper_values
from spaces.spec import SpaceSpec

SPACE = SpaceSpec(
    name="zaremba_ptb",
    description="Zaremba medium LSTM on Penn Treebank: dropout, nhid (= embedding size), "
    "init range, lr",
    model="zaremba",
    dataset="ptb",
    max_epochs=39,
    grace_period=10,
    fixed={**NTASGD, "preset": "medium"},
    parameters=ZAREMBA_PARAMS,
    warm_start=paper_values("zaremba", "ptb", ZAREMBA_PARAMS, "medium"),
).to_space()
