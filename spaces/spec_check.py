"""Whether a `SpaceSpec` can work, checked before any trial runs: every range, condition and
name, the warm start, and the configs of every condition at both ends of every range through
`awd.config.from_flat`. A problem raises `SpaceFileError` as ``FIELD: what is wrong``; the
problems of independent fields come together (`Problems`)."""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any, TypeVar

import optuna
from optuna.distributions import (
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from awd.config import MODELS, from_flat
from awd.data.registry import DATASETS, find_dataset
from awd.errors import UserError, first_line
from spaces.spec import (
    Condition,
    ParamSpec,
    Scalar,
    SpaceFileError,
    SpaceSpec,
    did_you_mean,
    same_value,
)

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")  # also an MLflow experiment/folder
METRICS = ("best_val_ppl", "val_ppl")
MODES = ("min", "max")
# Set by the space's own keys, or by the search (the epoch budget is max_epochs).
T = TypeVar("T")
RESERVED = {"model": "the top-level model key", "dataset": "the top-level dataset key",
            "epochs": "max_epochs (the search's epoch budget)"}


def fail(path: str, message: str) -> SpaceFileError:
    return SpaceFileError(f"{path}: {message}")


class Problems:
    """The problems of checks that do not depend on each other, so that a file's mistakes
    come all at once: one line for one problem (as each check raises it), else a line that
    counts them and one indented line each."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, check: Callable[..., T], *args: Any) -> T | None:
        """``check(*args)``, or None with its problems noted (those of a check that collects
        its own, one each)."""
        try:
            return check(*args)
        except SpaceFileError as e:
            head, *lines = str(e).split("\n")
            self.found.extend([line.strip() for line in lines] if lines else [head])
            return None

    def passed(self, check: Callable[..., Any], *args: Any) -> bool:
        """Whether ``check(*args)`` raised nothing (its problems noted)."""
        before = len(self.found)
        self.check(check, *args)
        return len(self.found) == before

    def raise_any(self) -> None:
        if len(self.found) == 1:
            raise SpaceFileError(self.found[0])
        if self.found:
            raise SpaceFileError(f"{len(self.found)} problems:\n"
                                 + "\n".join(f"  {p}" for p in self.found))


@cache
def config_fields(model: str) -> frozenset[str]:
    """The flat config fields of a model (`awd.config.RunConfig.to_flat`)."""
    return frozenset(from_flat({"model": model}).to_flat())


def check_spec(spec: SpaceSpec) -> SpaceSpec:
    """``spec`` if it can work; else `SpaceFileError` naming every field that cannot, as far
    as the checks do not depend on each other: the header's fields, each parameter, each name;
    the conditions once the models and parameters they name are right; the warm start and the
    configs once all of those are."""
    problems = Problems()
    for check in (_check_name, _check_dataset, _check_budget, _check_objective):
        problems.check(check, spec)
    models_ok = problems.passed(_check_models, spec)
    named = (spec.model,) if isinstance(spec.model, str) else spec.model
    models = tuple(m for m in named if m in MODELS)  # an unknown one is _check_models' problem
    bad = {p.name for i, p in enumerate(spec.parameters)
           if not problems.passed(_check_parameter, spec, i, p)}
    for name in spec.fixed:
        problems.check(_check_name_of, "fixed", name, models)
        if any(p.name == name for p in spec.parameters):
            problems.found.append(str(fail(f"fixed.{name}",
                                           "also a parameter: a field is fixed or searched")))
    bad |= {p.name for p in spec.parameters
            if not problems.passed(_check_name_of, "parameters", p.name, models)}
    if models_ok and not bad:  # conditions name the models and the parameters: right ones
        for i, condition in enumerate(spec.conditions):
            problems.check(_check_condition, spec, i, condition, models)
    problems.raise_any()
    _check_warm_start(spec)
    _check_configs(spec)
    return spec


def _check_name(spec: SpaceSpec) -> None:
    if not NAME.fullmatch(spec.name):
        raise fail("name", "a plain name (letters, digits, '-', '_', '.'; not starting with "
                   f"'.'; at most 200 characters), got {spec.name!r}")


def _check_models(spec: SpaceSpec) -> None:
    models = (spec.model,) if isinstance(spec.model, str) else spec.model
    if not models:
        raise fail("model", "needs a model or a list of models")
    for model in models:
        if model not in MODELS:
            raise fail("model", f"unknown model {model!r}{did_you_mean(model, MODELS)}; "
                       f"known: {', '.join(MODELS)}")
    if len(set(models)) < len(models):
        raise fail("model", f"a model is listed twice in {list(models)}")


def _check_dataset(spec: SpaceSpec) -> None:
    if find_dataset(spec.dataset) is None:
        raise fail("dataset", f"unknown dataset {spec.dataset!r}"
                   f"{did_you_mean(spec.dataset, DATASETS)}; known: {', '.join(DATASETS)}")


def _check_budget(spec: SpaceSpec) -> None:
    if spec.max_epochs < 1:
        raise fail("max_epochs", f"must be >= 1, got {spec.max_epochs}")
    if not 1 <= spec.grace_period <= spec.max_epochs:
        raise fail("grace_period", f"must be from 1 to max_epochs ({spec.max_epochs}), "
                   f"got {spec.grace_period}")


def _check_objective(spec: SpaceSpec) -> None:
    if spec.metric not in METRICS:
        raise fail("metric", f"must be one of {', '.join(METRICS)}, got {spec.metric!r}")
    if spec.mode not in MODES:
        raise fail("mode", f"must be one of {', '.join(MODES)}, got {spec.mode!r}")


def _check_parameter(spec: SpaceSpec, i: int, p: ParamSpec) -> None:
    check_param(f"parameters.{p.name}", p)
    if any(q.name == p.name for q in spec.parameters[:i]):
        raise fail(f"parameters.{p.name}", "declared twice")


def check_param(path: str, p: ParamSpec) -> None:
    """A parameter that Optuna takes as it is: no silent change of its range."""
    if p.type == "categorical":
        if not p.choices:
            raise fail(f"{path}.choices", "needs at least one choice")
        for i, choice in enumerate(p.choices):
            if any(same_value(choice, c) for c in p.choices[:i]):
                raise fail(f"{path}.choices", f"{choice!r} is listed twice")
        return
    assert p.low is not None and p.high is not None
    for key, value in (("low", p.low), ("high", p.high), ("step", p.step)):
        if value is not None and not math.isfinite(value):
            raise fail(f"{path}.{key}", f"must be a finite number, got {value}")
    if not p.high > p.low:
        raise fail(f"{path}.high", f"must be greater than low ({p.high} <= {p.low})")
    if p.log and p.step is not None:
        raise fail(f"{path}.step", "cannot be used with log")
    if p.log and p.low <= 0:
        raise fail(f"{path}.low", f"must be > 0 with log, got {p.low}")
    if p.step is not None:
        if p.step <= 0:
            raise fail(f"{path}.step", f"must be > 0, got {p.step}")
        with warnings.catch_warnings():  # Optuna lowers a high off the step's grid, warning
            warnings.simplefilter("ignore", UserWarning)
            distribution = p.distribution()
        assert isinstance(distribution, FloatDistribution | IntDistribution)
        high = distribution.high
        if high != p.high:
            raise fail(f"{path}.high", f"must be low plus a multiple of step {p.step} "
                       f"(Optuna would use {high})")


def _check_names(section: str, names: dict[str, Any], models: tuple[str, ...]) -> None:
    for name in names:
        _check_name_of(section, name, models)


def _check_name_of(section: str, name: str, models: tuple[str, ...]) -> None:
    """``name`` is a config field of every model it can apply to, and not the space's own."""
    if name in RESERVED:
        raise fail(f"{section}.{name}", f"set by {RESERVED[name]}")
    for model in models:
        if name not in config_fields(model):
            raise fail(f"{section}.{name}", f"not a config field of {model}"
                       f"{did_you_mean(name, config_fields(model))} "
                       "(see python -m awd.train --help)")


def _conditioning(spec: SpaceSpec) -> dict[str, ParamSpec]:
    """What a condition can name: ``model`` and the categorical ``parameters``."""
    found = {p.name: p for p in spec.parameters if p.type == "categorical"}
    model_param = spec.model_param
    if model_param is not None:
        found["model"] = model_param
    elif isinstance(spec.model, str):
        found["model"] = ParamSpec("model", "categorical", choices=(spec.model,))
    return found


def _overlap(a: Condition, b: Condition) -> bool:
    """Whether one trial can meet both conditions."""
    return all(any(same_value(x, y) for x in a.when[k] for y in b.when[k])
               for k in a.when.keys() & b.when.keys())


def _check_condition(spec: SpaceSpec, i: int, c: Condition, models: tuple[str, ...]) -> None:
    path = f"conditions[{i}]"
    if not c.when:
        raise fail(f"{path}.when", "needs at least one parameter (use top-level fixed and "
                   "parameters for what applies to every trial)")
    conditioning = _conditioning(spec)
    for name, values in c.when.items():
        if name not in conditioning:
            raise fail(f"{path}.when.{name}", f"unknown parameter"
                       f"{did_you_mean(name, conditioning)}; a condition names model or a "
                       f"categorical of parameters: {', '.join(conditioning)}")
        if not values:
            raise fail(f"{path}.when.{name}", "needs at least one value")
        for value in values:
            problem = conditioning[name].problem(value)
            if problem:
                raise fail(f"{path}.when.{name}", problem)
    applies_to = tuple(m for m in models if "model" not in c.when
                       or any(same_value(m, v) for v in c.when["model"]))
    _check_names(f"{path}.fixed", c.fixed, applies_to)
    _check_names(f"{path}.parameters", {p.name: None for p in c.parameters}, applies_to)
    for j, p in enumerate(c.parameters):
        where = f"{path}.parameters.{p.name}"
        check_param(where, p)
        if any(q.name == p.name for q in c.parameters[:j]):
            raise fail(where, "declared twice")
        if any(q.name == p.name for q in spec.parameters):
            raise fail(where, "also in parameters: a field is sampled for every trial or "
                       "under conditions")
        if p.name in spec.fixed:
            raise fail(where, "also in fixed: a field is fixed or searched")
        if p.name in c.fixed:
            raise fail(where, f"also in {path}.fixed: a field is fixed or searched")
    for name in c.fixed:
        if any(p.name == name for p in spec.parameters):
            raise fail(f"{path}.fixed.{name}", "also a parameter: a field is fixed or searched")
    for k, other in enumerate(spec.conditions[:i]):
        if _overlap(c, other):
            declared = {*other.fixed, *(p.name for p in other.parameters)}
            for name in [*c.fixed, *(p.name for p in c.parameters)]:
                if name in declared:
                    section = "fixed" if name in c.fixed else "parameters"
                    raise fail(f"{path}.{section}.{name}",
                               f"also set by conditions[{k}], which can apply to the same trial")
        _check_same_distributions(path, c, f"conditions[{k}]", other)


def warm_start_params(spec: SpaceSpec) -> dict[str, ParamSpec]:
    """The parameters the warm start's trial samples, given its own condition values."""
    params = {p.name: p for p in spec.parameters}
    model_param = spec.model_param
    if model_param is not None:
        params = {"model": model_param, **params}
    values = dict(spec.warm_start)
    if isinstance(spec.model, str):
        values["model"] = spec.model
    for condition in spec.active(values):
        params.update({p.name: p for p in condition.parameters})
    return params


def _check_warm_start(spec: SpaceSpec) -> None:
    params = warm_start_params(spec)
    missing = [name for name in params if name not in spec.warm_start]
    if missing:  # the warm start is also the paper configuration a confirmation re-trains
        raise fail("warm_start", f"missing {', '.join(missing)}: the first trial gives every "
                   "parameter it samples")
    for name, value in spec.warm_start.items():
        if name not in params:
            raise fail(f"warm_start.{name}", "not a parameter this warm start samples (a "
                       "conditional one needs its condition's values in the warm start too)")
        problem = params[name].problem(value)
        if problem:
            raise fail(f"warm_start.{name}", problem)


def _combinations(spec: SpaceSpec) -> Iterator[dict[str, Scalar]]:
    """One assignment per combination of the values conditions look at."""
    conditioning = _conditioning(spec)
    named = [n for n in conditioning if any(n in c.when for c in spec.conditions) or n == "model"]
    for values in itertools.product(*(conditioning[n].choices for n in named)):
        yield dict(zip(named, values, strict=True))


def _end(p: ParamSpec, high: bool) -> Scalar:
    if p.type == "categorical":
        return p.choices[-1 if high else 0]
    return p.high if high else p.low


def _check_configs(spec: SpaceSpec) -> None:
    """Every condition's config, with every parameter at its low end, then at its high end."""
    for combination in _combinations(spec):
        for high in (False, True):
            values = {p.name: _end(p, high) for p in spec.parameters}
            values.update(combination)
            for condition in spec.active(values):
                values.update({p.name: _end(p, high) for p in condition.parameters})
            try:
                from_flat(spec.sample(optuna.trial.FixedTrial(values)))
            except UserError as e:
                shown = "".join(f"{k}={v}, " for k, v in combination.items())
                end = "high" if high else "low"
                raise fail(f"config ({shown}parameters at their {end} ends)",
                           first_line(e)) from None


def _check_same_distributions(path: str, c: Condition, other_path: str, other: Condition) -> None:
    """A parameter named under two conditions may take other ranges there, but not another
    kind of distribution, log scale or set of choices: one Optuna study refuses such a
    parameter in its second trial."""
    theirs = {p.name: p for p in other.parameters}
    for p in c.parameters:
        if p.name in theirs:
            try:
                check_distribution_compatibility(theirs[p.name].distribution(), p.distribution())
            except ValueError as e:
                raise fail(f"{path}.parameters.{p.name}",
                           f"must have the same type, log scale and choices as in "
                           f"{other_path} (Optuna: {e})") from None
