"""Specification of the guard's plumbing: dead letters, rate-limited events, the consumer wrapper."""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis

from cp.celery_app import make_celery
from cp.messaging import guarded_consumer
from cp.messaging.dead_letters import read, store
from cp.messaging.envelope_check import Rejection
from cp.messaging.guard import Guard
from cp.messaging.guarded_redis import GuardedTransport
from cp.messaging.install import guard_of
from cp.messaging.recorder import RejectionRecorder, TokenBucket
from cp.settings import Settings
from tests.poison import body_bytes, headers_for

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_the_dead_letter_list_keeps_only_the_newest_entries() -> None:
    client = fakeredis.FakeRedis()
    for i in range(5):
        store(client, Rejection(queue="mycelial.cp", reason=f"r{i}", copy="x"), keep=3, now=NOW)
    entries = read(client, "mycelial.cp")
    assert [e["reason"] for e in entries] == ["r4", "r3", "r2"]
    assert entries[0] == {
        "at": NOW.isoformat(),
        "queue": "mycelial.cp",
        "reason": "r4",
        "task": None,
        "task_id": None,
        "copy": "x",
    }


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=1.0, burst=3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.0
    assert bucket.take() is True
    assert bucket.take() is False


def test_a_flood_of_rejections_is_recorded_as_a_few_events_that_count_the_rest() -> None:
    recorded: list[tuple[str, int]] = []
    done = threading.Event()

    def sink(rejection: Rejection, suppressed: int) -> None:
        recorded.append((rejection.reason, suppressed))
        if rejection.reason == "last":
            done.set()

    recorder = RejectionRecorder(sink, per_second=0.1)  # burst of 1: the first gets through
    for i in range(50):
        recorder.offer(Rejection(queue="q", reason=f"r{i}"))
    recorder._bucket._tokens = 1  # as if ten seconds had passed
    recorder.offer(Rejection(queue="q", reason="last"))
    assert done.wait(5)
    assert recorded == [("r0", 0), ("last", 49)]


def test_a_flood_of_rejections_is_logged_as_a_few_lines_that_count_the_rest(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    guard = Guard(Settings(home=tmp_path))
    with caplog.at_level("ERROR", logger="cp.messaging.guard"):
        for i in range(1_000):
            guard.reject(Rejection(queue="q", reason=f"r{i}", kind="security"), redis=None)
        guard._log_bucket._tokens = 1  # as if a second had passed
        guard.reject(Rejection(queue="q", reason="last", kind="security"), redis=None)
    lines = [r.getMessage() for r in caplog.records if r.name == "cp.messaging.guard"]
    assert len(lines) <= 60
    assert lines[-1].endswith(
        f"last ({1_000 - (len(lines) - 1)} more rejected since the last line, not logged one by one)"
    )
    assert guard.refused["security"] == 1_001  # every one counted


def test_a_sink_that_fails_loses_its_event_and_nothing_else() -> None:
    calls: list[str] = []
    done = threading.Event()

    def sink(rejection: Rejection, suppressed: int) -> None:
        calls.append(rejection.reason)
        if len(calls) == 2:
            done.set()
        raise RuntimeError("database down")

    recorder = RejectionRecorder(sink, per_second=100)
    recorder.offer(Rejection(queue="q", reason="a"))
    recorder.offer(Rejection(queue="q", reason="b"))
    assert done.wait(5)


class FakeMessage:
    def __init__(self, *, task: Any, body: bytes, client: fakeredis.FakeRedis) -> None:
        self.headers = headers_for(task)
        self.body = body
        self.content_type = "application/json"
        self.content_encoding = "utf-8"
        self.delivery_info = {"exchange": "", "routing_key": "mycelial.cp"}
        self.acknowledged = False
        client_ = client

        class Channel:
            @contextmanager
            def conn_or_acquire(self) -> Iterator[fakeredis.FakeRedis]:
                yield client_

        self.channel = Channel()

    def ack(self) -> None:
        self.acknowledged = True


def guarded_handler(monkeypatch: pytest.MonkeyPatch, inner: Any) -> Any:
    app = make_celery(Settings(), url="redis://127.0.0.1:1/0")

    def heartbeat(payload: Any) -> None:
        pass

    app.task(name="cp.heartbeat", shared=False)(heartbeat)
    monkeypatch.setattr(Consumer, "create_task_handler", lambda self, promise=None: inner)
    consumer = object.__new__(app.conf.worker_consumer)
    consumer.app = app
    consumer.connection_errors = (ConnectionError,)
    return consumer.create_task_handler()


def test_an_exception_while_celery_handles_a_message_is_caught_acked_and_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def celery_raises(message: Any) -> None:
        raise KeyError("something Celery did not expect")

    handle = guarded_handler(monkeypatch, celery_raises)
    client = fakeredis.FakeRedis()
    message = FakeMessage(task="cp.heartbeat", body=body_bytes([{"v": 1}]), client=client)
    handle(message)  # does not raise
    assert message.acknowledged
    [letter] = read(client, "mycelial.cp")
    assert letter["reason"] == "unexpected error: KeyError: 'something Celery did not expect'"
    assert letter["task"] == "cp.heartbeat"


def test_a_lost_connection_while_handling_is_left_to_the_consumer_to_reconnect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broker_gone(message: Any) -> None:
        raise ConnectionError("broker gone")

    handle = guarded_handler(monkeypatch, broker_gone)
    message = FakeMessage(task="cp.heartbeat", body=body_bytes([{"v": 1}]), client=fakeredis.FakeRedis())
    with pytest.raises(ConnectionError):
        handle(message)
    assert not message.acknowledged


def test_a_message_the_checks_refuse_never_reaches_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    reached: list[Any] = []
    handle = guarded_handler(monkeypatch, reached.append)
    client = fakeredis.FakeRedis()
    bad = FakeMessage(task=["cp.heartbeat"], body=body_bytes([{"v": 1}]), client=client)
    good = FakeMessage(task="cp.heartbeat", body=body_bytes([{"v": 1}]), client=client)
    handle(bad)
    handle(good)
    assert reached == [good]
    assert bad.acknowledged and not good.acknowledged
    assert "header task must be a string, got list" in read(client, "mycelial.cp")[0]["reason"]


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0", "redis+socket:///tmp/redis.socket"]
)
def test_every_redis_url_form_gets_the_guarded_transport(url: str) -> None:
    app = make_celery(Settings(), url=url)
    connection = app.connection_for_read()
    assert connection.get_transport_cls() is GuardedTransport
    assert connection.clone().get_transport_cls() is GuardedTransport
    assert connection.guard is guard_of(app)
    assert isinstance(guard_of(app), Guard)


def test_rediss_keeps_kombus_tls_default() -> None:
    connection = make_celery(Settings(), url="rediss://127.0.0.1:6380/0").connection_for_read()
    assert connection.ssl  # kombu turns TLS on for rediss:// when no options are set


# GuardedChannel carries copies of these two kombu methods with one call added: a kombu upgrade
# that changes them must be looked at (cp/messaging/guarded_redis.py)
KOMBU_SOURCES = {"_brpop_read": "c42518699709f2df", "_get": "be26a9f1eb4cf8da"}


@pytest.mark.parametrize("method", list(KOMBU_SOURCES))
def test_the_kombu_methods_the_guarded_channel_copies_are_unchanged(method: str) -> None:
    source = inspect.getsource(getattr(kombu_redis.Channel, method))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == KOMBU_SOURCES[method]


def test_the_consumer_module_is_the_one_celery_uses() -> None:
    app = make_celery(Settings(), url="redis://127.0.0.1:1/0")
    assert issubclass(app.conf.worker_consumer, Consumer)
    assert app.conf.worker_consumer.__module__ == guarded_consumer.__name__


def test_a_cp_worker_records_a_rejection_as_an_event_row_naming_queue_reason_and_the_unrecorded(
    tmp_path: Any,
) -> None:
    from sqlmodel import Session, select

    from cp.messaging.cp_events import database_sink
    from cp.models import DaemonEvent
    from cp.runtime import ControlPlane

    cp = ControlPlane(Settings(database_url=f"sqlite:///{tmp_path / 'cp.db'}"))
    sink = database_sink(cp)
    sink(Rejection(queue="mycelial.cp", reason="body must be [args, kwargs, embed]", task="cp.heartbeat"), 0)
    sink(Rejection(queue="mycelial.cp", reason="not a JSON message: x"), 12)
    with Session(cp.engine) as session:
        events = [
            (e.daemon, e.kind, e.reason) for e in session.exec(select(DaemonEvent).order_by(DaemonEvent.id))
        ]
    assert events == [
        (None, "message_rejected", "cp.heartbeat: queue mycelial.cp: body must be [args, kwargs, embed]"),
        (
            None,
            "message_rejected",
            "<no task>: queue mycelial.cp: not a JSON message: x"
            " (12 more rejected before this one, not recorded one by one)",
        ),
    ]
