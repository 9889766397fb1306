"""The error family of awdsearch: every problem a user can fix is a `UserError`.

Each command line (``awd.train``, ``awd.data``, ``search.run``, ``reports``) catches
`UserError` alone and prints its message on one line; anything else is a bug and keeps its
traceback. The subclasses live beside the code that raises them (``spaces.UnknownSpaceError``,
``search.options.OptionError``, ``search.tracking.store.TrackingError``, ``reports.ReportError``
...); this module, at the bottom of the layering, holds the base and the ``awd`` ones.
"""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none): what a
    one-line ``error:`` shows of a library's multi-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class UserError(Exception):
    """Base class: input the user can fix (config, data, space, options, tracking, report)."""


class DataError(UserError):
    """Missing, corrupt or inconsistent corpus files."""


class ConfigError(UserError, ValueError):
    """A configuration value outside its valid range."""


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed: missing, corrupt, or trained with another config."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the run must not be reported as a result."""

    def __init__(self, epoch: int, loss: float, phase: str = "train") -> None:
        self.epoch = epoch
        self.loss = loss
        self.phase = phase
        super().__init__(f"training diverged at epoch {epoch}: {phase} loss is {loss}")
