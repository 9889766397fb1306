"""What a trial costs (issue 18): the peak memory it measures, the Pareto fronts and the
matched-perplexity sentence of the report's "cost against perplexity" section. That every trial
of a real search logs its cost: tests/test_ablation.py's search."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from awd.memory import peak_memory_mb, reset_peak_memory
from reports.cost import SECONDS_TO_BEST, matched, pareto_front
from search import schema


def test_the_cpu_peak_is_the_runs_own_after_a_reset():
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    before = peak_memory_mb(cpu)
    block = torch.ones(40_000_000)  # 160 MB, touched
    assert peak_memory_mb(cpu) >= before + 120
    del block
    reset_peak_memory(cpu)  # a second run in the same process starts from what is used now
    assert peak_memory_mb(cpu) < before + 120


def test_the_pareto_front_keeps_only_the_unbeaten():
    val = np.array([60.0, 62.0, 61.0, 70.0, 60.0, math.nan, 59.0])
    cost = np.array([10.0, 5.0, 10.0, 1.0, 12.0, 0.5, math.nan])
    # 0: unbeaten; 1: cheaper than 0; 2: beaten by 0; 3: cheapest; 4: beaten by 0; NaN: never
    assert pareto_front(val, cost).tolist() == [True, True, False, True, False, False, False]


def _frame(rows: list[tuple[str, float, float, float, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, "val_ppl": v, schema.NUM_PARAMS: p, SECONDS_TO_BEST: s,
                          "device": d} for m, v, p, s, d in rows])


def test_matched_perplexity_compares_the_cheapest_that_reached_the_common_level():
    frame = _frame([("awd_lstm", 60.0, 24e6, 1000.0, "NVIDIA H100"),
                    ("awd_lstm", 65.0, 10e6, 300.0, "NVIDIA H100"),
                    ("awd_gru", 63.0, 12e6, 500.0, "NVIDIA H100"),
                    ("awd_gru", 66.0, 6e6, 100.0, "NVIDIA H100")])
    text = matched(frame)
    # the level both reached: the GRU's best, 63; LSTM trials there: only the 60 one
    assert "(63.00, the level both reached)" in text
    assert "0.50x the parameters (12,000,000 against 24,000,000)" in text
    assert "0.50x the training time (500.00 s against 1,000.00 s)" in text
    assert "CPU" not in text


def test_matched_perplexity_says_why_there_is_no_match_and_when_times_are_cpu():
    only_lstm = _frame([("awd_lstm", 60.0, 24e6, 1000.0, "cpu")])
    assert matched(only_lstm) == ("No match: this dataset has no awd_gru trial with a "
                                  "validation perplexity.")
    on_cpu = _frame([("awd_lstm", 60.0, 24e6, 1000.0, "cpu"), ("awd_gru", 61.0, 8e6, 90.0, "cpu")])
    assert "measured on CPU: they do not answer the GRU question" in matched(on_cpu)


@pytest.mark.parametrize("seconds", [math.nan, 0.0])
def test_matched_perplexity_without_times(seconds):
    frame = _frame([("awd_lstm", 60.0, 24e6, seconds, "x"), ("awd_gru", 60.0, 8e6, 5.0, "x")])
    assert "training time: not measured" in matched(frame)
