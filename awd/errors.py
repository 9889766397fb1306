"""Exceptions with messages meant for users, raised instead of bare tracebacks."""


class AWDError(Exception):
    """Base class: a problem the user can fix (bad data, bad config)."""


class DataError(AWDError):
    """Missing, corrupt or inconsistent corpus files."""


class ConfigError(AWDError, ValueError):
    """A configuration value outside its valid range."""


class TrainingDiverged(AWDError):
    """The loss became NaN or infinite; the run must not be reported as a result."""

    def __init__(self, epoch: int, loss: float, phase: str = "train") -> None:
        self.epoch = epoch
        self.loss = loss
        self.phase = phase
        super().__init__(f"training diverged at epoch {epoch}: {phase} loss is {loss}")
