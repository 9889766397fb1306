"""The `Space` record: an Optuna define-by-run function plus what the search needs to run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

DefineFn = Callable[[optuna.trial.BaseTrial], dict[str, Any]]


@dataclass(frozen=True)
class Space:
    """A search space.

    define: samples a trial's parameters and returns the FULL flat trial config (fixed values
        included), ready for ``awd.config.from_flat``.
    warm_start: values of the sampled parameters that reproduce the paper configuration; the
        search enqueues them so the first trial is the paper's.
    max_epochs / grace_period: the default epoch budget and ASHA's first rung, late enough for
        NT-ASGD to have triggered on most configurations.
    """

    name: str
    description: str
    model: str  # a model name, or "mixed" when the model is itself a choice
    dataset: str
    define: DefineFn
    warm_start: dict[str, Any]
    max_epochs: int
    grace_period: int
    metric: str = "best_val_ppl"
    mode: str = "min"

    def config(self, trial: optuna.trial.BaseTrial, **overrides: Any) -> dict[str, Any]:
        """The trial's config with search-level overrides (e.g. the epoch budget) applied. A
        fixed model in a space where the model is a choice is fixed before sampling, so that
        the trial samples that model's own parameters."""
        if self.model == "mixed" and "model" in overrides and hasattr(self.define, "spec"):
            fixing: Any = self.define  # a spec's `SpecDefine`, which can fix the model
            return {**fixing(trial, model=str(overrides["model"])), **overrides}
        return {**self.define(trial), **overrides}

    def paper_config(self, **overrides: Any) -> dict[str, Any]:
        """The config of the warm-start trial, without running a study."""
        return self.config(optuna.trial.FixedTrial(self.warm_start), **overrides)
