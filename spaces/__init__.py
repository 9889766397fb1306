"""Optuna search spaces, one module each, and the registry that names them."""

from __future__ import annotations

from awd.errors import UserError
from spaces import awd_ptb, awd_wt2, compare_ptb, gru_ptb, gru_wt2, smoke, zaremba_ptb
from spaces._space import Space

SPACES: dict[str, Space] = {
    m.SPACE.name: m.SPACE
    for m in (awd_ptb, awd_wt2, gru_ptb, gru_wt2, zaremba_ptb, compare_ptb, smoke)
}


class UnknownSpaceError(UserError):
    """A space name that is not registered; the message lists the known ones."""


def get_space(name: str) -> Space:
    try:
        return SPACES[name]
    except KeyError:
        raise UnknownSpaceError(
            f"unknown space {name!r}; known spaces: {', '.join(SPACES)}"
        ) from None


__all__ = ["SPACES", "Space", "UnknownSpaceError", "get_space"]
