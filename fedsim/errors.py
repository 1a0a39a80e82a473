"""The project's exception hierarchy; the CLI turns these into one-line errors."""


class FedsimError(Exception):
    """Base class of every error fedsim reports to a user."""

    exit_code = 1


class ConfigError(FedsimError):
    """A run configuration is invalid; carries every problem found at once."""

    exit_code = 2

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class DatasetError(FedsimError):
    """A dataset cannot be found, read or partitioned as asked."""

    exit_code = 2


class BadMessage(FedsimError):
    """A message from the other side breaks the protocol (e.g. a setting out of range)."""


class RunAborted(FedsimError):
    """A run stopped before its last round (too few clients replied, ...)."""


class RunInterrupted(FedsimError):
    """The user or a scheduler asked the run to stop (SIGINT, SIGTERM).

    Raised inside the ServerApp when its stop event is set: the round in progress
    is abandoned (its pending replies are not waited for, nothing of it is recorded)
    and the run keeps the rounds it completed.
    """

    exit_code = 130
