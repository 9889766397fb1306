"""The search's own user error (options have `search.options.OptionError`, tracking
`search.tracking.store.TrackingError`; all derive from `awd.errors.UserError`)."""

from typing import NoReturn

from awd.errors import UserError


class SearchError(UserError):
    """The search cannot start or resume; the message says why."""


class Terminated(KeyboardInterrupt):
    """SIGTERM while the driver starts or restores a search, before Tune takes the signals
    over (`search.tune.session.fit`): it stops the driver as Ctrl-C does (`search.run`)."""


# SIGTERMs a handler turned into `Terminated` in this run (`terminate`): Python prints and drops
# an exception raised while it runs a garbage-collection callback (a weakref's, a __del__), so a
# signal that lands in one would be lost; `raise_swallowed_termination` raises it again.
_terminating: list[bool] = []


def terminate() -> NoReturn:
    """From a SIGTERM handler: `Terminated`, noted first."""
    _terminating.append(True)
    raise Terminated


def raise_swallowed_termination() -> None:
    """At a point where a signal's exception is not swallowed (before Tune runs a search): the
    `Terminated` a garbage-collection callback dropped, if one did."""
    if _terminating:
        raise Terminated


def forget_terminations() -> None:
    """A new run of the command line, or a `Terminated` that got out and was caught: none
    swallowed to raise again."""
    _terminating.clear()

