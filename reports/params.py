"""Typed views of MLflow params: MLflow stores every param as a string."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from search.results import parse_param

REGULARISERS = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop", "alpha", "beta")


def column_kind(values: Iterable[Any]) -> str:
    """"int", "float" or "categorical" for one param's parsed values over several runs."""
    kinds = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "categorical"
        kinds.add(type(v))
    if not kinds:
        return "categorical"
    return "int" if kinds == {int} else "float"


def same_value(a: Any, b: Any) -> bool:
    """Equal after parsing, so that "0.4" equals "0.40" and "1" equals "1.0"."""
    pa, pb = parse_param(a), parse_param(b)
    if isinstance(pa, bool) or isinstance(pb, bool):
        return pa == pb
    if isinstance(pa, (int, float)) and isinstance(pb, (int, float)):
        return math.isclose(pa, pb, rel_tol=1e-9, abs_tol=1e-12)
    return str(pa) == str(pb)


def is_zero(value: Any) -> bool:
    v = parse_param(value)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0
