"""A consumer whose lost broker connection cannot be closed cleanly still reconnects
(cp/broker_reconnect.py); with Celery's own consumer the same failure stops the worker."""

from __future__ import annotations

import threading
from typing import Any

import celery.contrib.testing.tasks  # noqa: F401  # start_worker needs its ping task
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker.consumer import Consumer

from cp.broker_reconnect import ReconnectingConsumer, consumer_settings, consuming_step
from cp.celery_app import make_celery
from cp.settings import Settings


class Transport:
    def __init__(self, *, client: object) -> None:
        self.client: object | None = client


class BrokenConnection:
    """What kombu 5.7 leaves after ``collect()``: closing the channel rebuilds a pool from a
    transport client that is already ``None``."""

    connection_errors: tuple[type[Exception], ...] = (ConnectionError,)  # only these are ignored
    channel_errors: tuple[type[Exception], ...] = ()

    def __init__(self) -> None:
        self.close_calls = 0
        self._transport = Transport(client=self)

    def collect(self, socket_timeout: float | None = None) -> None:
        self._transport.client = None  # as kombu's Connection._do_close_transport does

    def close(self) -> None:
        self.close_calls += 1
        raise AttributeError("'NoneType' object has no attribute 'hostname'")


def consumer(cls: type[Any], connection: BrokenConnection) -> Any:
    app = Celery("reconnect-test", broker="memory://", set_as_current=False)
    app.conf.update(consumer_settings(), worker_enable_prefetch_count_reduction=False)
    made = cls.__new__(cls)  # only the parts the connection-error path reads
    made.app, made.connection = app, connection
    return made


def test_a_lost_connection_whose_close_fails_is_let_go_and_the_consumer_goes_on_to_reconnect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection = BrokenConnection()
    guarded = consumer(ReconnectingConsumer, connection)
    guarded.on_connection_error_after_connected(ConnectionError("Connection closed by server."))
    assert connection.close_calls == 1
    assert guarded.connection is None  # Celery's loop connects afresh from here
    # a job still running acks its message on the old connection's channel when it ends
    assert connection._transport.client is connection
    assert "closing it failed" in caplog.text and "hostname" in caplog.text


def test_celerys_own_consumer_lets_the_same_failure_escape_and_that_stops_its_worker() -> None:
    # the defect the guard is for; should Celery fix it, this test says the guard can go
    plain = consumer(Consumer, BrokenConnection())
    with pytest.raises(AttributeError, match="hostname"):
        plain.on_connection_error_after_connected(ConnectionError("Connection closed by server."))


def test_every_app_consumes_with_a_reconnecting_consumer_and_keeps_running_jobs() -> None:
    app = make_celery(Settings(broker_url="memory://"))
    assert issubclass(app.conf.worker_consumer, ReconnectingConsumer)
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert consumer_settings()["worker_cancel_long_running_tasks_on_connection_loss"] is False


def test_a_control_plane_worker_notes_when_its_consumer_begins_consuming() -> None:
    app = Celery("consuming-test", broker="memory://", set_as_current=False)
    app.conf.update(consumer_settings(), task_default_queue="consuming-test")
    began = threading.Event()
    app.steps["consumer"].add(consuming_step(began.set))
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        assert began.wait(30)
