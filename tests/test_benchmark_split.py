"""`benchmarks.capacity.split_capacity`: the accounting that `search_overhead` and
`tune_floor` share. Every slot-second of a search lands in exactly one part."""

from __future__ import annotations

import pytest

from benchmarks.capacity import split_capacity, trial_row


def row(trial: str, start: float, end: float, training: float) -> dict:
    return trial_row(trial, {"timestamp": end, "time_total_s": end - start}, training)


def test_a_known_search_is_split_into_its_parts():
    """Two slots from t=0 to t=30; trials a (5-15) and c (16-25) on one slot, b (6-20) on the
    other, which then waits 5 s for c."""
    rows = [row("a", 5, 15, 8), row("b", 6, 20, 12), row("c", 16, 25, 7)]
    split = split_capacity(rows, 0.0, 30.0, 2)
    assert split["capacity_s"] == 60 and split["training_s"] == 27
    assert split["in_trial_overhead_s"] == 33 - 27  # Ray time beyond training
    assert split["driver_parts_s"] == {"startup_s": 10, "summary_after_last_trial_s": 10,
                                       "idle_tail_s": 5, "between_trials_s": 2}
    assert split["driver_overhead_s"] == 27
    assert split["orchestration_share"] == pytest.approx(1 - 27 / 60)
    assert split["steady_state_share"] == pytest.approx(1 - 27 / (60 - 10 - 10 - 5))
    assert [t["trial"] for t in split["trials"]] == ["a", "b", "c"]
    assert all("start" not in t and "end" not in t for t in split["trials"])


def test_every_slot_second_is_counted_once():
    rows = [row(str(i), 2.0 + 3 * i, 9.5 + 4 * i, 5.0 + i) for i in range(5)]
    split = split_capacity(rows, 0.0, 40.0, 3)
    parts = (split["training_s"] + split["in_trial_overhead_s"]
             + sum(split["driver_parts_s"].values()))
    assert parts == pytest.approx(split["capacity_s"]) and split["capacity_s"] == 120
    assert split["driver_parts_s"]["startup_s"] == pytest.approx(2.0 * 3)
    assert split["driver_parts_s"]["summary_after_last_trial_s"] == pytest.approx(
        (40 - 25.5) * 3)
