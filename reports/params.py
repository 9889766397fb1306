"""Typed views of MLflow params: MLflow stores every param as a string."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


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
