"""Run failures, split by whether trying again later can help."""

from __future__ import annotations

from workers.secrets import scrubbed


class MovementError(RuntimeError):
    """A failure with a message fit for an operator: names the connector and the cause, no secrets."""

    retryable = False

    def __init__(self, *args: object) -> None:
        # every connector's message passes here: clean it of resolved secrets and DSN credentials
        super().__init__(*(scrubbed(a) if isinstance(a, str) else a for a in args))


class RetryableError(MovementError):
    """The source or destination could not be reached; a later attempt may succeed."""

    retryable = True


class LeaseHeldError(RetryableError):
    """Another run of the same pipeline holds the destination; it will let go when it ends."""


class CancelledError(MovementError):
    """The run was cancelled between batches; the destination is consistent."""


class TimedOutError(RetryableError):
    """The attempt reached its time limit; what it had not committed is rolled back."""
