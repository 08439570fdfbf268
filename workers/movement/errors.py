"""Run failures, split by whether trying again later can help."""

from __future__ import annotations


class MovementError(RuntimeError):
    """A failure with a message fit for an operator: names the connector and the cause, no secrets."""

    retryable = False


class RetryableError(MovementError):
    """The source or destination could not be reached; a later attempt may succeed."""

    retryable = True


class LeaseHeldError(RetryableError):
    """Another run of the same pipeline holds the destination; it will let go when it ends."""


class CancelledError(MovementError):
    """The run was cancelled between batches; the destination is consistent."""


class TimedOutError(RetryableError):
    """The attempt reached its time limit; what it had not committed is rolled back."""
