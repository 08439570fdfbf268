"""A Celery consumer that reconnects after a broker outage instead of stopping its worker.

When the consumer loses its Redis connection, Celery 5.7 first ``collect()``s the connection, which
detaches kombu's transport from it, and then closes it. The close still finds the consumer's channel
open and has it put its unacknowledged messages back (``restore_unacked_once``); the channel builds
a fresh connection pool from its transport's client, which ``collect()`` set to ``None``, and raises
``AttributeError``. Only connection errors are ignored there, so the AttributeError escapes the
consumer and Celery stops the worker with "Unrecoverable error" (celery#4652, #9250, kombu#582 are
kin of it). Everything that matters has happened by then: the consumer has let go of the old
connection, and its running tasks keep running. So a failure in that clean-up is logged and the
consumer goes on to reconnect, like after any connection error.

The same detached transport would stop the worker later too: a task that was running when the
connection broke is acknowledged, when it ends, on a channel of the old connection, in the event
loop, where the AttributeError is just as fatal. So the old transport gets its client back once
the consumer is done with it; the late ack then reaches the broker (or fails as a connection error,
which Celery only logs).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.exceptions import CPendingDeprecationWarning
from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)


def _ignore_cancel_warning() -> None:
    """Celery warns on every reconnect that one day it will cancel running late-ack tasks by default;
    the app says explicitly that it does not want that (``consumer_settings``)."""
    warnings.filterwarnings(
        "ignore",
        message=r"(?s).*worker_cancel_long_running_tasks_on_connection_loss",
        category=CPendingDeprecationWarning,
    )


class ReconnectingConsumer(Consumer):
    """Celery's consumer, whose clean-up of a lost connection cannot stop the worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _ignore_cancel_warning()  # after Celery's logging set-up turned its warnings on

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        transport = getattr(connection, "_transport", None)
        if connection is not None:
            # Celery calls ``connection.close`` in there, shielded from connection errors only
            connection.close = _quiet(connection.close, lost=exc)  # type: ignore[method-assign]
        try:
            super().on_connection_error_after_connected(exc)
        finally:
            if transport is not None and transport.client is None:
                # a job that was running when the connection broke acks its message on a channel
                # of that connection when it ends: the channel must still know the broker's address
                transport.client = connection


def _quiet(close: Callable[[], object], *, lost: Exception) -> Callable[[], None]:
    def close_quietly() -> None:
        try:
            close()
        except Exception as cleanup:  # the connection is gone either way
            log.warning(
                "broker connection lost (%r); closing it failed (%r), reconnecting anyway", lost, cleanup
            )

    return close_quietly


def consumer_settings() -> dict[str, Any]:
    """The Celery settings that keep a worker and its running tasks through a broker outage."""
    return {
        # the consumer class itself is set by cp/messaging/install.py: the guarded consumer is a
        # ReconnectingConsumer
        # a running job keeps moving data while the broker is away: its destination is not the broker
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def consuming_step(on_consuming: Callable[[], None]) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep that calls ``on_consuming`` each time the consumer (re)starts consuming:
    Celery starts the consumer's steps again after every reconnect."""

    class NoteConsuming(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, parent: Any) -> None:
            on_consuming()

    return NoteConsuming
