"""The one exception a report raises for bad input (shown as a single ``error:`` line)."""

from awd.errors import UserError


class ReportError(UserError):
    """Input that cannot produce a report: unknown experiment, unreadable store, no runs."""
