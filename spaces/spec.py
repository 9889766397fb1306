"""A search space as data: `SpaceSpec` declares what a define-by-run function would do, and the
function is generated from it (`SpecDefine`), so that a space prints as YAML exactly and a YAML
file (`spaces.spec_file`) defines a space without Python.

What a generated function samples, in order: ``model`` (when the spec lists several models),
``parameters``, then the ``parameters`` of each condition that applies. A trial's config is
``model``, ``dataset``, ``fixed``, the applying conditions' ``fixed`` (a condition's value wins),
then the sampled values: the full flat config `awd.config.from_flat` takes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from awd.errors import UserError
from spaces._space import Space

Scalar = str | int | float | bool | None
PARAM_TYPES = ("float", "int", "categorical")


class SpaceFileError(UserError):
    """A space declaration that cannot work; the message names the file and the field."""


def near_miss(word: object, known: Iterable[str]) -> str | None:
    """The one of ``known`` that ``word`` most likely misspells (difflib's ratio >= 0.6)."""
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return close[0] if close else None


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a `near_miss`, else ``""``: appended to an "unknown ..."
    message."""
    close = near_miss(word, known)
    return f" (did you mean {close!r}?)" if close else ""


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same kind: True is not the choice 1, nor 1 the choice 1.0."""
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class ParamSpec:
    """One sampled parameter: a float or int range (optionally log-scaled or stepped), or a
    categorical choice. Its name is the config field it sets and the Optuna parameter's name."""

    name: str
    type: str  # one of PARAM_TYPES
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Scalar, ...] = ()

    def distribution(self) -> BaseDistribution:
        """What Optuna records for the parameter (stored studies compare it)."""
        if self.type == "categorical":
            return CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` cannot be this parameter's value (None: it can)."""
        if self.type == "categorical":
            if any(same_value(value, c) for c in self.choices):
                return None
            return f"{value!r} is not one of {list(self.choices)}"
        assert self.low is not None and self.high is not None
        whole = self.type == "int"
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            return f"must be {'a whole number' if whole else 'a number'}, got {value!r}"
        if not self.low <= value <= self.high:
            return f"{value} is outside [{self.low}, {self.high}]"
        if self.step is not None:
            steps = (value - self.low) / self.step
            if abs(steps - round(steps)) > 1e-9:
                return f"{value} is not {self.low} plus a multiple of the step {self.step}"
        return None


def float_param(name: str, low: float, high: float, *, log: bool = False,
                step: float | None = None) -> ParamSpec:
    return ParamSpec(name, "float", float(low), float(high), step, log)


def int_param(name: str, low: int, high: int, *, log: bool = False,
              step: int | None = None) -> ParamSpec:
    return ParamSpec(name, "int", low, high, step, log)


def categorical_param(name: str, choices: tuple[Scalar, ...]) -> ParamSpec:
    return ParamSpec(name, "categorical", choices=tuple(choices))


@dataclass(frozen=True)
class Condition:
    """Fixed values and parameters that apply only when every named parameter (``model`` or a
    categorical of the spec's ``parameters``) has one of the listed values."""

    when: dict[str, tuple[Scalar, ...]]
    fixed: dict[str, Scalar] = field(default_factory=dict)
    parameters: tuple[ParamSpec, ...] = ()

    def applies(self, values: Mapping[str, Any]) -> bool:
        return all(name in values and any(same_value(values[name], v) for v in allowed)
                   for name, allowed in self.when.items())


@dataclass(frozen=True)
class SpaceSpec:
    """A whole search space; `spaces.spec_check.check_spec` says whether it can work."""

    name: str
    model: str | tuple[str, ...]  # several: ``model`` is a categorical, sampled first
    dataset: str
    max_epochs: int
    grace_period: int = 1
    description: str = ""
    fixed: dict[str, Scalar] = field(default_factory=dict)
    parameters: tuple[ParamSpec, ...] = ()
    conditions: tuple[Condition, ...] = ()
    warm_start: dict[str, Scalar] = field(default_factory=dict)
    metric: str = "best_val_ppl"
    mode: str = "min"

    @property
    def model_param(self) -> ParamSpec | None:
        """The categorical ``model`` parameter of a space over several models."""
        if isinstance(self.model, str):
            return None
        return categorical_param("model", self.model)

    def sample(self, trial: optuna.trial.BaseTrial, model: str | None = None) -> dict[str, Any]:
        """The define-by-run function: one trial's full flat config; ``model`` fixes the model
        of a space where it is a choice (``--set model=awd_lstm``: that model's conditional
        parameters are sampled, not another's)."""
        model_param = self.model_param
        chosen: Any = model
        if chosen is None:
            chosen = self.model if model_param is None else model_param.suggest(trial)
        model = chosen
        sampled = {p.name: p.suggest(trial) for p in self.parameters}
        active = self.active({"model": model, **sampled})
        config: dict[str, Any] = {"model": model, "dataset": self.dataset, **self.fixed}
        for condition in active:
            config.update(condition.fixed)
        config.update(sampled)
        for condition in active:
            config.update({p.name: p.suggest(trial) for p in condition.parameters})
        return config

    def active(self, values: Mapping[str, Any]) -> list[Condition]:
        return [c for c in self.conditions if c.applies(values)]

    def to_space(self) -> Space:
        return Space(name=self.name, description=self.description,
                     model=self.model if isinstance(self.model, str) else "mixed",
                     dataset=self.dataset, define=SpecDefine(self),
                     warm_start=dict(self.warm_start), max_epochs=self.max_epochs,
                     grace_period=self.grace_period, metric=self.metric, mode=self.mode)


@dataclass(frozen=True)
class SpecDefine:
    """A spec's define-by-run function as an object, not a closure: it pickles with Tune's
    searcher state, and `spec_of` finds the spec behind a `Space`."""

    spec: SpaceSpec

    def __call__(self, trial: optuna.trial.BaseTrial, model: str | None = None
                 ) -> dict[str, Any]:
        return self.spec.sample(trial, model)


def spec_of(space: Space) -> SpaceSpec | None:
    """The declaration a space was built from (None: a hand-written define function)."""
    return space.define.spec if isinstance(space.define, SpecDefine) else None


# A space not declared as a SpaceSpec (a define function): the params shown for it.
SHOWN_PARAMS = ("model", "emsize", "nhid", "dropout", "dropouth", "dropouti", "dropoute",
                "wdrop", "lr")


def searched_names(space: Space) -> list[str]:
    """Every parameter the space searches, in its order (the model first when it is one)."""
    spec = spec_of(space)
    if spec is None:
        return list(SHOWN_PARAMS)
    names = ["model"] if spec.model_param is not None else []
    for p in (*spec.parameters, *(p for c in spec.conditions for p in c.parameters)):
        if p.name not in names:
            names.append(p.name)
    return names


def searched(space: Space, config: Mapping[str, Any]) -> dict[str, Any]:
    """The values a trial's config holds for the space's searched parameters, in the space's
    order; a parameter of a condition that does not apply to the trial (another model's) is
    absent."""
    spec = spec_of(space)
    if spec is None:
        return {k: config[k] for k in SHOWN_PARAMS if k in config}
    params = [p.name for p in spec.parameters]
    for condition in spec.active(config):
        params += [p.name for p in condition.parameters if p.name not in params]
    names = (["model"] if spec.model_param is not None else []) + params
    return {k: config[k] for k in names if k in config}

