"""Typed views of MLflow params: MLflow stores every param as a string."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

REGULARISERS = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop", "alpha", "beta")


def parse_value(text: Any) -> Any:
    """An int, float or bool for a param string that spells one, else the string itself."""
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
    pa, pb = parse_value(a), parse_value(b)
    if isinstance(pa, bool) or isinstance(pb, bool):
        return pa == pb
    if isinstance(pa, (int, float)) and isinstance(pb, (int, float)):
        return math.isclose(pa, pb, rel_tol=1e-9, abs_tol=1e-12)
    return str(pa) == str(pb)


def is_zero(value: Any) -> bool:
    v = parse_value(value)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0
