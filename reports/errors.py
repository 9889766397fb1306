"""The one exception a report raises for bad input (shown as a single ``error:`` line)."""


class ReportError(Exception):
    """Input that cannot produce a report: unknown experiment, unreadable store, no runs."""
