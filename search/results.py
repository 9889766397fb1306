"""What each trial of a search left, and the one rule that names the best trial.

Ray-free on purpose: the search's summary and `reports` both rank trials with `best_index`, so
the two can never disagree on which trial won.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from awd.config import from_flat
from search import schema


def status_of(result: Mapping[str, Any]) -> str:
    """A trial's outcome from its last result (errors are reported separately by Tune)."""
    if result.get(schema.DIVERGED) or result.get(schema.FATAL):
        return schema.STATUS_FAILED  # ASHA may stop a diverged trial before its error surfaces
    return schema.STATUS_COMPLETED if result.get(schema.FINISHED) else schema.STATUS_STOPPED


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


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
