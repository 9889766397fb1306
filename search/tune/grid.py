"""Tune's results of a run (its `ResultGrid`) as the Ray-free `TrialSummary` the rest of the
search reads: one function for the search and its confirmation alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.result_grid import ResultGrid

from search import schema
from search.results import TrialSummary, failure_reason, status_of


def _as_is(config: dict[str, Any]) -> dict[str, Any]:
    return config


def summarize(result_grid: ResultGrid, interrupted: frozenset[str] = frozenset(),
              run_config: Callable[[dict[str, Any]], dict[str, Any]] = _as_is
              ) -> list[TrialSummary]:
    """Each trial's outcome from Tune's results: status, failure reason, last result, last
    checkpoint. The ``interrupted`` trials (running when a signal stopped the search) are
    `STATUS_INTERRUPTED` unless they had already failed. ``run_config``: the trial's run
    config from its Tune config (a confirmation wraps it)."""
    trials = []
    for i in range(len(result_grid)):
        r = result_grid[i]
        metrics = dict(r.metrics or {})
        error = str(r.error) if r.error is not None else None
        status = schema.STATUS_FAILED if error is not None else status_of(metrics)
        trial_id = str(metrics.get("trial_id", str(r.path).rsplit("_", 1)[-1]))
        if trial_id in interrupted and status != schema.STATUS_FAILED:
            status = schema.STATUS_INTERRUPTED
        reason = failure_reason(metrics, error) if status == schema.STATUS_FAILED else None
        trials.append(TrialSummary(trial_id=trial_id, status=status,
                                   config=run_config(dict(r.config or {})), metrics=metrics,
                                   checkpoint=r.checkpoint, error=reason))
    return trials
