"""How a search's capacity (wall time x trial slots) splits into training and orchestration:
the accounting `search_overhead` and `tune_floor` share, from each trial's last Ray result."""

from __future__ import annotations

from typing import Any


def trial_row(trial_id: str, last: dict[str, Any], training_s: float) -> dict[str, Any]:
    """A trial's times from its last Ray result: its training seconds, its Ray time, and its
    start and end on the wall clock (Ray's ``time_total_s`` runs from the trial's first step)."""
    end = last["timestamp"]
    return {"trial": trial_id, "training_s": training_s, "ray_time_s": last["time_total_s"],
            "start": end - last["time_total_s"], "end": end}


def split_capacity(trial_rows: list[dict[str, Any]], started: float, ended: float,
                   slots: int) -> dict[str, Any]:
    """Split slots x wall time into training, in-trial overhead and driver overhead, with the
    driver's part broken into start-up (before the first trial), the idle tail (slots waiting
    for the last trial), the summary after the last trial, and gaps between trials."""
    wall = ended - started
    capacity = wall * slots
    training = sum(r["training_s"] for r in trial_rows)
    in_trial = sum(r["ray_time_s"] for r in trial_rows) - training
    first_start = min(r["start"] for r in trial_rows)
    last_end = max(r["end"] for r in trial_rows)
    ends = sorted(r["end"] for r in trial_rows)[-slots:]  # each slot's last trial
    driver = {
        "startup_s": (first_start - started) * slots,
        "summary_after_last_trial_s": (ended - last_end) * slots,
        "idle_tail_s": sum(last_end - e for e in ends),
    }
    driver["between_trials_s"] = (capacity - training - in_trial) - sum(driver.values())
    trials = [{k: v for k, v in r.items() if k not in ("start", "end")} for r in trial_rows]
    return {
        "wall_s": wall,
        "slots": slots,
        "capacity_s": capacity,
        "training_s": training,
        "in_trial_overhead_s": in_trial,
        "driver_overhead_s": sum(driver.values()),
        "driver_parts_s": driver,
        "orchestration_share": 1 - training / capacity,
        "steady_state_share": 1
        - training
        / (
            capacity
            - driver["startup_s"]
            - driver["summary_after_last_trial_s"]
            - driver["idle_tail_s"]
        ),
        "mean_trial_training_s": training / len(trial_rows),
        "trials": trials,
    }
