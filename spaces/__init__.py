"""Optuna search spaces, one module each, and the registry that names them; a space can also
be a YAML file (`spaces.spec_file`), in the form ``show_space`` prints a built-in one."""

from __future__ import annotations

from awd.errors import UserError
from spaces import awd_ptb, awd_wt2, bench_ptb, compare_ptb, gru_ptb, gru_wt2, smoke, zaremba_ptb
from spaces._space import Space
from spaces.spec import SpaceFileError, SpaceSpec, did_you_mean, spec_of
from spaces.spec_file import dump_spec, load_space_file, spec_digest

SPACES: dict[str, Space] = {
    m.SPACE.name: m.SPACE
    for m in (awd_ptb, awd_wt2, gru_ptb, gru_wt2, zaremba_ptb, compare_ptb, smoke, bench_ptb)
}


class UnknownSpaceError(UserError):
    """A space name that is not registered; the message lists the known ones."""


def get_space(name: str) -> Space:
    try:
        return SPACES[name]
    except KeyError:
        raise UnknownSpaceError(
            f"unknown space {name!r}{did_you_mean(name, SPACES)}; known spaces: "
            f"{', '.join(SPACES)}"
        ) from None


def show_space(name: str) -> str:
    """A registered space as a space file (`load_space_file` reads it back as the same space)."""
    spec = spec_of(get_space(name))
    if spec is None:
        raise UnknownSpaceError(f"space {name!r} has a hand-written define function; only a "
                                "declared space prints as a file")
    return dump_spec(spec)


__all__ = ["SPACES", "Space", "SpaceFileError", "SpaceSpec", "UnknownSpaceError", "dump_spec",
           "get_space", "load_space_file", "show_space", "spec_digest", "spec_of"]
