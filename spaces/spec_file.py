"""Space files: a `SpaceSpec` read from YAML (``search.run --space-file``) and written back as
YAML (``search.run --show-space``). The schema, in the order `dump_spec` writes it::

    name: my_space            # the MLflow experiment (unless --experiment) and awdsearch.space
    description: ...
    model: awd_lstm           # or a list: then `model` is a categorical, sampled first
    dataset: ptb
    max_epochs: 10            # the epoch budget (--max-epochs overrides it)
    grace_period: 3           # ASHA's first rung (default 1)
    metric: best_val_ppl      # or val_ppl
    mode: min
    fixed: {KEY: VALUE}       # config fields of every trial
    parameters:               # sampled in this order, for every trial
      NAME: {type: float, low: 0.1, high: 0.5}          # also log: true, or step: 0.05
      NAME: {type: int, low: 200, high: 800, step: 50}  # also log: true
      NAME: {type: categorical, choices: [a, b]}
    conditions:               # each applies only when every `when` parameter has a listed value
      - when: {model: [zaremba]}   # model, or a categorical of parameters
        fixed: {KEY: VALUE}        # wins over the top-level fixed
        parameters: {NAME: {...}}
    warm_start: {NAME: VALUE}  # the first trial: a value for every parameter it samples

Every problem is one `SpaceFileError` line, ``FILE: FIELD: what is wrong``; those of
different fields come together, one indented line each under ``FILE: N problems:``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from pathlib import Path
from typing import Any

import yaml

from awd.errors import first_line
from spaces.spec import (
    PARAM_TYPES,
    Condition,
    ParamSpec,
    Scalar,
    SpaceFileError,
    SpaceSpec,
    did_you_mean,
    near_miss,
)
from spaces.spec_check import Problems, check_spec, fail, warm_start_params

TOP_KEYS = ("name", "description", "model", "dataset", "max_epochs", "grace_period", "metric",
            "mode", "fixed", "parameters", "conditions", "warm_start")
REQUIRED = ("name", "model", "dataset", "max_epochs", "warm_start")
PARAM_KEYS = {"float": ("type", "low", "high", "step", "log"),
              "int": ("type", "low", "high", "step", "log"),
              "categorical": ("type", "choices")}
CONDITION_KEYS = ("when", "fixed", "parameters")


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (YAML keeps the last one silently) and reads
    1e-5 as a float (YAML 1.1 wants 1.0e-5)."""


def _no_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise yaml.constructor.ConstructorError(None, None, "a key must be plain text",
                                                    key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_space_file(path: str | Path) -> SpaceSpec:
    """The checked spec of a YAML file; `SpaceFileError` names the file and the field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SpaceFileError(f"{source}: cannot read it: {e.strerror or first_line(e)}") from None
    except UnicodeDecodeError:
        raise SpaceFileError(f"{source}: not UTF-8 text") from None
    return parse_space(text, source)


def parse_space(text: str, source: str) -> SpaceSpec:
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpaceFileError(f"{source}: YAML syntax error{where}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise SpaceFileError(f"{source}: YAML syntax error: {first_line(e)}") from None
    try:
        spec = check_spec(spec_from_data(data))
        return _typed_warm_start(spec)
    except SpaceFileError as e:
        raise SpaceFileError(f"{source}: {e}") from None


def spec_from_data(data: Any) -> SpaceSpec:
    """A spec from parsed YAML, every key and type checked (ranges are `check_spec`'s)."""
    if not isinstance(data, dict):
        raise fail("top level", f"must be a mapping with the keys {', '.join(REQUIRED)} (and "
                   f"optionally the others), got {_kind(data)}")
    problems = Problems()
    problems.check(_known_keys, "", data, TOP_KEYS)
    meant = {near_miss(key, TOP_KEYS) for key in data if key not in TOP_KEYS}  # said there
    missing = [key for key in REQUIRED if key not in data and key not in meant]
    if missing:
        problems.found.append(str(fail(", ".join(missing), "missing (required: "
                                       + ", ".join(REQUIRED) + ")")))
    read = {
        "name": lambda: _text("name", data["name"]),
        "description": lambda: _text("description", data.get("description", "")),
        "model": lambda: _models(data["model"]),
        "dataset": lambda: _text("dataset", data["dataset"]),
        "max_epochs": lambda: _whole("max_epochs", data["max_epochs"]),
        "grace_period": lambda: _whole("grace_period", data.get("grace_period", 1)),
        "metric": lambda: _text("metric", data.get("metric", "best_val_ppl")),
        "mode": lambda: _text("mode", data.get("mode", "min")),
        "fixed": lambda: _fixed("fixed", data.get("fixed", {})),
        "parameters": lambda: _parameters("parameters", data.get("parameters", {}), problems),
        "conditions": lambda: tuple(problems.check(_condition, f"conditions[{i}]", c)
                                    for i, c in enumerate(_list("conditions",
                                                                data.get("conditions", [])))),
        "warm_start": lambda: _fixed("warm_start", data["warm_start"]),
    }
    fields: dict[str, Any] = {key: problems.check(reader) for key, reader in read.items()
                              if key in data or key not in REQUIRED}
    problems.raise_any()
    return SpaceSpec(**fields)


def _models(model: Any) -> str | tuple[str, ...]:
    return (tuple(_text(f"model[{i}]", m) for i, m in enumerate(_list("model", model)))
            if isinstance(model, list) else _text("model", model))


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", bool: "true/false",
             type(None): "nothing (null)"}
    return names.get(type(value), f"the number {value}" if isinstance(value, int | float)
                     else type(value).__name__)


def _known_keys(path: str, data: dict[Any, Any], known: tuple[str, ...]) -> None:
    """Every unknown key of a mapping in one line, the first named, each with a near miss."""
    unknown = [key for key in data if key not in known]
    if unknown:
        where = f"{path}.{unknown[0]}" if path else str(unknown[0])
        others = "".join(f"; also unknown: {key!r}{did_you_mean(key, known)}"
                         for key in unknown[1:])
        raise fail(where, f"unknown key{did_you_mean(unknown[0], known)}{others} "
                   f"(known: {', '.join(known)})")


def _mapping(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(path, f"must be a mapping, got {_kind(value)}")
    return value


def _list(path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise fail(path, f"must be a list, got {_kind(value)}")
    return value


def _text(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise fail(path, f"must be text, got {_kind(value)}")
    return value


def _whole(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(path, f"must be a whole number, got {_kind(value)}")
    return value


def _number(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(path, f"must be a number, got {_kind(value)}")
    if not math.isfinite(value):
        raise fail(path, f"must be a finite number, got {value}")
    return float(value)


def _flag(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(path, f"must be true or false, got {_kind(value)}")
    return value


def _scalar(path: str, value: Any) -> Scalar:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise fail(path, f"must be a single value (text, number, true/false), got {_kind(value)}")
    return value


def _fixed(path: str, value: Any) -> dict[str, Scalar]:
    return {str(k): _scalar(f"{path}.{k}", v) for k, v in _mapping(path, value).items()}


def _parameters(path: str, value: Any, problems: Problems | None = None,
                ) -> tuple[ParamSpec, ...]:
    """Each parameter read on its own: every bad one noted in ``problems`` (given: the
    caller raises them with the others), or raised together."""
    own = problems is None
    noted = Problems() if problems is None else problems
    params = tuple(noted.check(_param, f"{path}.{name}", str(name), spec)
                   for name, spec in _mapping(path, value).items())
    if own:
        noted.raise_any()
    return tuple(p for p in params if p is not None)


def _param(path: str, name: str, value: Any) -> ParamSpec:
    data = _mapping(path, value)
    if "type" not in data:
        raise fail(f"{path}.type", f"missing (one of {', '.join(PARAM_TYPES)})")
    kind = data["type"]
    if kind not in PARAM_TYPES:
        raise fail(f"{path}.type", f"must be one of {', '.join(PARAM_TYPES)}, got {kind!r}"
                   f"{did_you_mean(kind, PARAM_TYPES)}")
    _known_keys(path, data, PARAM_KEYS[kind])
    if kind == "categorical":
        if "choices" not in data:
            raise fail(f"{path}.choices", "missing (a list of values)")
        choices = _list(f"{path}.choices", data["choices"])
        return ParamSpec(name, kind, choices=tuple(
            _scalar(f"{path}.choices[{i}]", c) for i, c in enumerate(choices)))
    for key in ("low", "high"):
        if key not in data:
            raise fail(f"{path}.{key}", "missing")
    read = _whole if kind == "int" else _number
    step = data.get("step")
    return ParamSpec(name, kind, read(f"{path}.low", data["low"]),
                     read(f"{path}.high", data["high"]),
                     None if step is None else read(f"{path}.step", step),
                     _flag(f"{path}.log", data.get("log", False)))


def _condition(path: str, value: Any) -> Condition:
    data = _mapping(path, value)
    _known_keys(path, data, CONDITION_KEYS)
    if "when" not in data:
        raise fail(f"{path}.when", "missing (e.g. when: {model: [zaremba]})")
    when = {}
    for name, values in _mapping(f"{path}.when", data["when"]).items():
        where = f"{path}.when.{name}"
        listed = values if isinstance(values, list) else [values]
        when[str(name)] = tuple(_scalar(f"{where}[{i}]", v) for i, v in enumerate(listed))
    return Condition(when=when, fixed=_fixed(f"{path}.fixed", data.get("fixed", {})),
                     parameters=_parameters(f"{path}.parameters", data.get("parameters", {})))


def _typed_warm_start(spec: SpaceSpec) -> SpaceSpec:
    """Whole numbers of float parameters as floats, as Optuna would sample them."""
    params = warm_start_params(spec)
    warm = {k: float(v) if params[k].type == "float" and isinstance(v, int) else v
            for k, v in spec.warm_start.items()}
    return dataclasses.replace(spec, warm_start=warm)


class _Flow(dict[str, Any]):
    """A mapping written on one line (a parameter, a condition's `when`)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True))
_Dumper.add_representer(  # a list of values on one line, a list of conditions in blocks
    list, lambda d, data: d.represent_sequence(
        "tag:yaml.org,2002:seq", data,
        flow_style=not any(isinstance(x, dict | list) for x in data)))


def spec_to_data(spec: SpaceSpec) -> dict[str, Any]:
    """The YAML form of a spec; defaults left out."""
    data: dict[str, Any] = {
        "name": spec.name, "description": spec.description,
        "model": spec.model if isinstance(spec.model, str) else list(spec.model),
        "dataset": spec.dataset, "max_epochs": spec.max_epochs,
        "grace_period": spec.grace_period, "metric": spec.metric, "mode": spec.mode,
        "fixed": dict(spec.fixed), "parameters": _params_data(spec.parameters),
        "conditions": [{"when": _Flow({k: list(v) for k, v in c.when.items()}),
                        **({"fixed": dict(c.fixed)} if c.fixed else {}),
                        **({"parameters": _params_data(c.parameters)} if c.parameters else {})}
                       for c in spec.conditions],
        "warm_start": dict(spec.warm_start),
    }
    return {k: v for k, v in data.items() if v not in ({}, [], "")}


def _params_data(params: tuple[ParamSpec, ...]) -> dict[str, _Flow]:
    shown = {}
    for p in params:
        if p.type == "categorical":
            shown[p.name] = _Flow(type=p.type, choices=list(p.choices))
            continue
        entry = _Flow(type=p.type, low=p.low, high=p.high)
        if p.step is not None:
            entry["step"] = p.step
        if p.log:
            entry["log"] = True
        shown[p.name] = entry
    return shown


def dump_spec(spec: SpaceSpec) -> str:
    """The spec as a space file; `parse_space` reads back the same spec."""
    body = yaml.dump(spec_to_data(spec), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=100)
    return f"# python -m search.run --space-file FILE (space {spec.name})\n{body}"


def spec_digest(spec: SpaceSpec) -> str:
    """What a resumed search compares: the spec's meaning, not the file's comments or layout."""
    return hashlib.sha256(dump_spec(spec).encode()).hexdigest()
