"""What each trial of a search left, and the rules read from it, each in one place: a trial's
outcome (`status_of`) and why it failed (`failure_reason`), its objective, the best trial
(`best_index`), the status counts and the GPU-hours of a set of trials.

Ray-free on purpose: the search's summary, its console, its confirmation and `reports` all use
these, so that they can never disagree on which trial won or on what a search cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awd.config import from_flat
from search import schema


def status_of(result: Mapping[str, Any]) -> str:
    """A trial's outcome from its last result (errors are reported separately by Tune)."""
    if result.get(schema.DIVERGED) or result.get(schema.FATAL):
        return schema.STATUS_FAILED  # ASHA may stop a diverged trial before its error surfaces
    return schema.STATUS_COMPLETED if result.get(schema.FINISHED) else schema.STATUS_STOPPED


DIVERGED_REASON = "diverged"  # the failure of a trial whose loss became NaN or infinite


def failure_reason(result: Mapping[str, Any], error: str | None = None) -> str | None:
    """Why a trial failed: Tune's ``error`` (the exception it raised) if any, else what its
    last result says (a fatal error's reason, or divergence); None for a trial that did not
    fail."""
    if error:
        return error
    if result.get(schema.FATAL):
        return str(result[schema.FATAL])
    return DIVERGED_REASON if result.get(schema.DIVERGED) else None


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _number_or_zero(value: Any) -> float:
    return float(value) if _finite(value) else 0.0


def objective(record: Mapping[str, Any] | None) -> float:
    """The validation perplexity a trial is ranked by, and a search's best_val_ppl: its final
    one if it has one, else the lowest it reached; NaN for no trial or neither number."""
    if record is None:
        return math.nan
    for name in (schema.FINAL_VAL_PPL, schema.BEST_VAL_PPL):
        if _finite(record.get(name)):
            return float(record[name])
    return math.nan


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    """How many trials have each status: every one of `schema.TRIAL_STATUSES` (0 if none), in
    that order, then any other (Tune's pending, paused) in the order first seen. The counts add
    up to the trials, whatever their statuses."""
    counts = dict.fromkeys(schema.TRIAL_STATUSES, 0)
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def gpu_hours(records: Iterable[Mapping[str, Any]], gpus_per_trial: float | None = None
              ) -> float:
    """Sum over trials of train_seconds x GPUs per trial / 3600: ``gpus_per_trial`` for all of
    them, else each record's own ``gpus_per_trial``. Unknown numbers count as 0."""
    seconds = 0.0
    for r in records:
        gpus = gpus_per_trial if gpus_per_trial is not None else r.get("gpus_per_trial")
        seconds += _number_or_zero(r.get(schema.TRAIN_SECONDS)) * _number_or_zero(gpus)
    return seconds / 3600


def ranking(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of ``records`` (mappings with ``status``, ``final_val_ppl``, ``best_val_ppl``)
    from best to worst: completed trials by final validation perplexity, then the other unfailed
    trials by the lowest validation perplexity they reached. Failed and unscored trials are
    left out."""
    completed = [i for i, r in enumerate(records) if r.get("status") == schema.STATUS_COMPLETED
                 and _finite(r.get(schema.FINAL_VAL_PPL))]
    others = [i for i, r in enumerate(records) if i not in completed
              and r.get("status") != schema.STATUS_FAILED and _finite(r.get(schema.BEST_VAL_PPL))]
    return (sorted(completed, key=lambda i: float(records[i][schema.FINAL_VAL_PPL]))
            + sorted(others, key=lambda i: float(records[i][schema.BEST_VAL_PPL])))


def best_index(records: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the best trial among ``records``: the first of `ranking`, or None. The
    completed trial with the lowest final validation perplexity; if none completed, the
    unfailed trial with the lowest validation perplexity reached."""
    ranked = ranking(records)
    return ranked[0] if ranked else None


def parse_param(text: Any) -> Any:
    """An MLflow param (always a string) or a ``--set`` value back as the int, float or bool it
    spells, else the string itself (so is a non-finite number: no NaN configs)."""
    if not isinstance(text, str):
        return text
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low)
    except ValueError:
        pass
    try:
        value = float(low)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


@dataclass
class TrialSummary:
    """One trial as Tune ended it: its config, last result, last checkpoint and outcome."""

    trial_id: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]  # the trial's last Tune result
    checkpoint: Any  # a ray.tune.Checkpoint, or None
    error: str | None

    @property
    def full_config(self) -> dict[str, Any]:
        """Every field of the run, preset values included: enough to reproduce it."""
        return from_flat(self.config).to_flat()

    def record(self) -> dict[str, Any]:
        """The trial as `best_index` reads it."""
        return {**self.metrics, "status": self.status}


def pick_best(trials: Sequence[TrialSummary]) -> TrialSummary | None:
    """The best trial by `best_index`."""
    i = best_index([t.record() for t in trials])
    return None if i is None else trials[i]
