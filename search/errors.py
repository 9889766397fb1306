"""The search's own user error (options have `search.options.OptionError`, tracking
`search.tracking.store.TrackingError`; all derive from `awd.errors.UserError`)."""

from awd.errors import UserError


class SearchError(UserError):
    """The search cannot start or resume; the message says why."""
