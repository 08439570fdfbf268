"""The delivery step and its senders, over an in-process HTTP transport (the real receiver on
127.0.0.1 is in tests/test_notifications.py)."""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cp.alerts.backoff import RetryPolicy
from cp.alerts.delivery import DeliverySettings, NotifierDirectory, deliver_due
from cp.alerts.notifier_spec import LogNotifier, WebhookNotifier
from cp.alerts.outbox import AlertDelivery, AlertNotice
from cp.alerts.senders import MAX_RESPONSE_BYTES, SendResult, WebhookSender, body_bytes, make_sender
from cp.alerts.signing import signing_key, verify
from cp.config_store import apply_document
from cp.db import session_scope

from .conftest import validate

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOOK = WebhookNotifier(
    name="ops-hook",
    kind="webhook",
    url="https://hooks.example/alerts",
    secret="${env:HOOK_SECRET}",
    headers={"X-Team": "data"},
)


@pytest.fixture(autouse=True)
def _hook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)


def a_notice(**fields: Any) -> AlertNotice:
    body = {
        "dedup_key": "k1",
        "status": "firing",
        "group_key": "g",
        "rule": "edge-down",
        "severity": "page",
        "alerts": [
            {
                "rule": "edge-down",
                "subject": "edge-1",
                "state": "firing",
                "summary": "offline",
                "labels": {},
                "fired_at": "2026-03-01T12:00:00+00:00",
                "resolved_at": None,
            }
        ],
        "sent_because": "new",
    }
    values: dict[str, Any] = {
        "dedup_key": f"k-{uuid.uuid4().hex[:8]}",
        "created_at": T0,
        "notifier": "ops-hook",
        "group_key": "g",
        "status": "firing",
        "body": body,
    }
    return AlertNotice(**{**values, **fields})


def post_with(handler: Callable[[httpx.Request], httpx.Response]) -> WebhookSender:
    return WebhookSender(clock=lambda: 1_800_000_000.0, transport=httpx.MockTransport(handler))


def test_a_webhook_is_posted_as_signed_json_per_standard_webhooks() -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    notice = a_notice()
    assert post_with(receiver)(HOOK, notice) == SendResult(ok=True, http_status=204)
    (request,) = seen
    assert request.method == "POST" and str(request.url) == HOOK.url
    assert request.headers["webhook-id"] == notice.dedup_key
    assert request.headers["webhook-timestamp"] == "1800000000"
    assert request.headers["content-type"] == "application/json" and request.headers["x-team"] == "data"
    assert request.content == body_bytes(notice) and json.loads(request.content) == notice.body
    assert verify(
        signing_key(SECRET),
        msg_id=notice.dedup_key,
        timestamp=1_800_000_000,
        body=request.content,
        header=request.headers["webhook-signature"],
    )


def test_an_error_answer_keeps_only_the_first_kibibyte_scrubbed_of_the_secret() -> None:
    def receiver(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=f"down, secret was {SECRET} ".encode() + b"y" * 100_000)

    result = post_with(receiver)(HOOK, a_notice())
    assert not result.ok and result.retryable and result.http_status == 503
    assert result.error.startswith("HTTP 503: down, secret was ***")
    assert SECRET not in result.error and "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in result.error
    assert len(result.error) <= len("HTTP 503: ") + MAX_RESPONSE_BYTES


def test_a_client_error_is_not_retried() -> None:
    result = post_with(lambda _: httpx.Response(410, content=b"gone"))(HOOK, a_notice())
    assert (result.ok, result.retryable, result.error) == (False, False, "HTTP 410: gone")


def test_an_unreachable_receiver_is_retried() -> None:
    def receiver(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    result = post_with(receiver)(HOOK, a_notice())
    assert not result.ok and result.retryable and result.error == "ConnectError: connection refused"


def test_a_missing_secret_is_named_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_SECRET")
    result = post_with(lambda _: httpx.Response(200))(HOOK, a_notice())
    assert not result.ok and result.retryable
    assert result.error == "notifier ops-hook: environment variable HOOK_SECRET is not set"


def test_a_header_value_that_cannot_be_sent_is_an_error_that_never_shows_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "tök-3f9a7c1e")
    hook = HOOK.model_copy(update={"headers": {"Authorization": "${env:HOOK_TOKEN}"}})
    result = post_with(lambda _: httpx.Response(200))(hook, a_notice())
    assert not result.ok and result.retryable and result.error
    assert "3f9a7c1e" not in result.error


def test_the_log_notifier_writes_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    notice = a_notice()
    with caplog.at_level(logging.INFO, logger="mycelial.alerts.notices"):
        assert make_sender()(LogNotifier(name="audit-log", kind="log"), notice).ok
    (record,) = [r for r in caplog.records if r.name == "mycelial.alerts.notices"]
    line = json.loads(record.getMessage().removeprefix("alert notice "))
    assert line["webhook_id"] == notice.dedup_key and line["rule"] == "edge-down"
    assert record.levelno == logging.WARNING


# --- the delivery step ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def sessions(engine: Engine) -> Callable[[], AbstractContextManager[Session]]:
    def open_session() -> AbstractContextManager[Session]:
        return session_scope(engine)

    return open_session


@pytest.fixture
def configured(engine: Engine, raw_config: dict[str, Any]) -> Iterator[None]:
    raw = {
        **raw_config,
        "notifiers": [
            {
                "name": "ops-hook",
                "kind": "webhook",
                "url": "https://hooks.example/a",
                "secret": "${env:HOOK_SECRET}",
            }
        ],
    }
    with session_scope(engine) as session:
        apply_document(session, validate(raw), author="t", comment="", source="t", now=T0)
    yield


SETTINGS = DeliverySettings(policy=RetryPolicy(first_delay=5.0, max_delay=600.0), lease=timedelta(minutes=5))


def step(
    sessions: Callable[[], AbstractContextManager[Session]],
    clock: Clock,
    answers: list[SendResult],
    directory: NotifierDirectory | None = None,
) -> list[str]:
    sent: list[str] = []

    def send(spec: Any, notice: AlertNotice) -> SendResult:
        sent.append(notice.dedup_key)
        return answers.pop(0)

    deliver_due(
        sessions,
        send=send,
        directory=directory or NotifierDirectory(),
        settings=SETTINGS,
        now=clock,
        rng=random.Random(3),
    )
    return sent


def add(engine: Engine, notice: AlertNotice) -> str:
    with session_scope(engine) as session:
        session.add(notice)
    return notice.dedup_key


def deliveries(engine: Engine) -> list[tuple[bool, int | None]]:
    with Session(engine) as session:
        return [(d.ok, d.http_status) for d in session.exec(select(AlertDelivery).order_by(AlertDelivery.id))]


@pytest.mark.usefixtures("configured")
def test_a_failing_notice_is_retried_with_backoff_until_it_is_delivered_once(
    engine: Engine, sessions: Callable[[], AbstractContextManager[Session]]
) -> None:
    key = add(engine, a_notice())
    clock = Clock()
    fail = SendResult(ok=False, http_status=500, error="HTTP 500")
    assert step(sessions, clock, [fail]) == [key]
    assert step(sessions, clock, []) == []  # not due yet
    clock.now += timedelta(seconds=5)
    assert step(sessions, clock, [fail]) == [key]
    clock.now += timedelta(seconds=5)
    assert step(sessions, clock, []) == []  # the second delay is 5-10 s
    clock.now += timedelta(seconds=5)
    assert step(sessions, clock, [SendResult(ok=True, http_status=200)]) == [key]
    clock.now += timedelta(hours=1)
    assert step(sessions, clock, []) == []
    assert deliveries(engine) == [(False, 500), (False, 500), (True, 200)]


@pytest.mark.usefixtures("configured")
def test_a_permanent_failure_gives_the_notice_up_after_one_attempt(
    engine: Engine, sessions: Callable[[], AbstractContextManager[Session]]
) -> None:
    add(engine, a_notice())
    clock = Clock()
    step(sessions, clock, [SendResult(ok=False, http_status=404, error="HTTP 404", retryable=False)])
    clock.now += timedelta(days=1)
    assert step(sessions, clock, []) == []
    with Session(engine) as session:
        (row,) = session.exec(select(AlertNotice)).all()
    assert row.given_up_at == T0 and row.last_error == "HTTP 404"


@pytest.mark.usefixtures("configured")
def test_a_notice_for_a_notifier_no_longer_configured_is_given_up_and_says_why(
    engine: Engine, sessions: Callable[[], AbstractContextManager[Session]]
) -> None:
    add(engine, a_notice(notifier="gone"))
    assert step(sessions, Clock(), []) == []
    with Session(engine) as session:
        (row,) = session.exec(select(AlertNotice)).all()
    assert row.given_up_at is not None and row.last_error == "notifier gone is not configured"


@pytest.mark.usefixtures("configured")
def test_a_sender_that_raises_leaves_the_notice_to_retry_not_claimed(
    engine: Engine, sessions: Callable[[], AbstractContextManager[Session]]
) -> None:
    add(engine, a_notice())

    def broken(spec: Any, notice: AlertNotice) -> SendResult:
        raise RuntimeError("bug")

    deliver_due(
        sessions,
        send=broken,
        directory=NotifierDirectory(),
        settings=SETTINGS,
        now=Clock(),
        rng=random.Random(1),
    )
    with Session(engine) as session:
        (row,) = session.exec(select(AlertNotice)).all()
    assert row.claimed_by is None and row.next_attempt_at is not None
    assert row.last_error == "internal error: RuntimeError"
