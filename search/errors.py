"""The search's own user error (options have `search.options.OptionError`, tracking
`search.tracking.store.TrackingError`; all derive from `awd.errors.UserError`)."""

from awd.errors import UserError


class SearchError(UserError):
    """The search cannot start or resume; the message says why."""


class Terminated(KeyboardInterrupt):
    """SIGTERM while the driver starts or restores a search, before Tune takes the signals
    over (`search.tune.session.fit`): it stops the driver as Ctrl-C does (`search.run`)."""
