"""Parameter groups shared by several spaces; ranges contain the paper values.

Ranges follow the reference code's tuning history: the published AWD values were re-tuned
between code versions (dropouth 0.3 vs 0.25, dropouti 0.4 vs 0.65), so each range spans both.
"""

from __future__ import annotations

from typing import Any

from awd.config import preset
from spaces._space import Space
from spaces.spec import ParamSpec, SpaceSpec, float_param, int_param

# AWD-LSTM / AWD-GRU: the five dropouts, sizes, lr, AR/TAR and NT-ASGD's patience.
AWD_PARAMS = (
    float_param("dropout", 0.2, 0.6),
    float_param("dropouth", 0.1, 0.45),
    float_param("dropouti", 0.2, 0.7),
    float_param("dropoute", 0.0, 0.2),
    float_param("wdrop", 0.2, 0.7),
    int_param("emsize", 200, 800, step=50),
    int_param("nhid", 600, 1500, step=50),
    float_param("lr", 10.0, 40.0),
    float_param("alpha", 0.0, 3.0),
    float_param("beta", 0.0, 2.0),
    int_param("nonmono", 3, 8),
)
# Zaremba's LSTM: one dropout on all non-recurrent connections; its embedding size is nhid
# (untied), so searching nhid searches the embedding size.
ZAREMBA_PARAMS = (
    float_param("dropout", 0.3, 0.7),
    int_param("nhid", 400, 1000, step=50),
    float_param("init_range", 0.02, 0.1),
    float_param("lr", 0.5, 2.0),
)
# Every trial of every space trains with NT-ASGD (the Zaremba preset alone would use its SGD
# schedule); the AWD models' preset is the paper's model for the dataset ("").
NTASGD = {"preset": "", "optimizer": "ntasgd"}


def paper_values(model: str, dataset: str, params: tuple[ParamSpec, ...],
                 size: str = "") -> dict[str, Any]:
    """The preset's values of the searched parameters: the warm start of a space."""
    flat = preset(model, dataset, size).to_flat()
    return {p.name: flat[p.name] for p in params}


DATASET_TITLES = {"ptb": "Penn Treebank", "wikitext-2": "WikiText-2"}
MODEL_TITLES = {"awd_lstm": "AWD-LSTM", "awd_gru": "AWD-GRU", "zaremba": "Zaremba LSTM"}


def awd_space(name: str, model: str, dataset: str, max_epochs: int = 100,
              grace_period: int = 30) -> Space:
    """A space over one AWD model on one dataset, warm-started at the paper configuration."""
    return SpaceSpec(
        name=name,
        description=f"{MODEL_TITLES[model]} on {DATASET_TITLES[dataset]}: dropouts, emsize, "
        "nhid, lr, AR/TAR, nonmono",
        model=model,
        dataset=dataset,
        max_epochs=max_epochs,
        grace_period=grace_period,
        fixed=dict(NTASGD),
        parameters=AWD_PARAMS,
        warm_start=paper_values(model, dataset, AWD_PARAMS),
    ).to_space()
