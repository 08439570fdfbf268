"""How a run's outcome ends its ``daemon.run_job`` task, so Flower shows what the run did.

The outcome is recorded first: its ``cp.run_event`` is in the outbox before the task ends, and the
run's row in SQL stays the truth. Then a failed or timed-out run raises ``RunFailed`` or
``RunTimedOut`` with the error in one scrubbed line: Celery reports the task FAILURE and, the task
acknowledging on failure, takes the message off the queue, so nothing is redelivered and the
control plane alone decides on another attempt. A cancelled run announces ``task-revoked`` and
raises ``Ignore`` (acknowledged, no other event): Flower shows it REVOKED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.exceptions import Ignore

from workers.jobs import Outcome
from workers.secrets import scrubbed

log = logging.getLogger(__name__)


class RunFailed(Exception):
    """The run failed; the message is the run's error, scrubbed, on one line."""

    def __repr__(self) -> str:
        # what Celery puts in the task-failed event and Flower shows as the exception
        return f"{type(self).__name__}: {self}"


class RunTimedOut(RunFailed):
    """The attempt reached its time limit."""


class JobRefused(RunFailed):
    """The job message was malformed; it was refused (and reported) without running anything."""


class RunCancelled(RunFailed):
    """The run was cancelled (shown by the task-revoked event, never raised to Celery)."""


class DuplicateDelivery(Ignore):
    """This daemon is running or has run this task id: the copy ends without an event of its own,
    which would otherwise overwrite the original's state in Flower."""


def one_line(text: str) -> str:
    return " ".join(text.split())


def refused(reason: str) -> JobRefused:
    """What a refused job's task raises, once the refusal is recorded: it ends FAILURE too."""
    return JobRefused(one_line(scrubbed(reason)))


def end_task(outcome: Outcome, *, announce_revoked: Callable[[str], None]) -> None:
    """Return for a run that succeeded; otherwise raise what ends the task as the run ended."""
    if outcome.state == "succeeded":
        return
    error = one_line(scrubbed(outcome.error or f"run {outcome.state}"))
    if outcome.state == "cancelled":
        try:
            announce_revoked(repr(RunCancelled(error)))
        except Exception as exc:  # the outcome is recorded; only Flower's view of it is lost
            log.warning("could not announce the cancelled task to Flower: %s", exc)
        raise Ignore()
    if outcome.state == "timed_out":
        raise RunTimedOut(error)
    raise RunFailed(error)
