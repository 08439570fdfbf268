"""Alert notices reach a real HTTP receiver on 127.0.0.1 exactly once, signed per Standard
Webhooks, through real control-plane workers and beats; failures are retried and recorded.

Notices are inserted the way the alert evaluator writes them (cp/alerts/outbox.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cp.alerts.outbox import AlertDelivery, AlertNotice
from cp.db import create_schema, make_engine, session_scope
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for
from tests.webhook_receiver import SECRET, Receiver, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def hook(name: str, url: str) -> str:
    return f"  - {{name: {name}, kind: webhook, url: '{url}', secret: '${{env:HOOK_SECRET}}', timeout: 5s}}\n"


def start_control_plane(stack: Stack, config: str, *, workers: int, beats: int) -> Engine:
    stack.env["HOOK_SECRET"] = SECRET
    engine = make_engine(normalize_database_url(stack.env["MYCELIAL_DATABASE_URL"]))
    create_schema(engine)
    stack.cli("apply", "-f", str(stack.write_config(config)), check=True)
    for index in range(workers):
        stack.start(f"worker-{index}", "worker")
    for index in range(beats):
        stack.start(f"beat-{index}", "beat")
    return engine


def insert_notices(engine: Engine, notifier: str, count: int, *, status: str = "firing") -> list[str]:
    """Rows as the evaluator writes them: one per transition and target, unique dedup_key."""
    keys = [f"daemon_offline:edge-{i}:{status}:{uuid.uuid4().hex[:8]}" for i in range(count)]
    with session_scope(engine) as session:
        for key in keys:
            session.add(
                AlertNotice(
                    dedup_key=key,
                    created_at=datetime.now(UTC),
                    notifier=notifier,
                    group_key="edge-down",
                    status=status,
                    body={
                        "dedup_key": key,
                        "status": status,
                        "group_key": "edge-down",
                        "rule": "edge-down",
                        "severity": "page",
                        "sent_because": "new",
                        "alerts": [
                            {
                                "rule": "edge-down",
                                "subject": key.split(":")[1],
                                "state": status,
                                "summary": "no heartbeat",
                                "labels": {"site": "berlin"},
                                "fired_at": "2026-03-01T12:00:00+00:00",
                                "resolved_at": None,
                            }
                        ],
                    },
                )
            )
    return keys


def settled(engine: Engine, keys: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        with Session(engine) as session:
            rows = session.exec(select(AlertNotice).where(col(AlertNotice.dedup_key).in_(keys))).all()
        return all(r.delivered_at is not None for r in rows)

    return check


def attempts(engine: Engine, key: str) -> list[tuple[bool, int | None]]:
    with Session(engine) as session:
        notice = session.exec(select(AlertNotice).where(AlertNotice.dedup_key == key)).one()
        rows = session.exec(
            select(AlertDelivery).where(AlertDelivery.notice_id == notice.id).order_by(col(AlertDelivery.id))
        ).all()
    return [(r.ok, r.http_status) for r in rows]


def test_each_notice_arrives_exactly_once_signed_with_two_workers_and_two_beats(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], receiver: Receiver
) -> None:
    stack = make_stack(make_database_url("postgres"))
    receiver.delay = 0.2
    config = "notifiers:\n" + hook("ops-hook", f"http://127.0.0.1:{receiver.port}/hook")
    config += "  - {name: audit-log, kind: log, level: warning}\n"
    engine = start_control_plane(stack, config, workers=2, beats=2)
    try:
        keys = insert_notices(engine, "ops-hook", 30) + insert_notices(
            engine, "ops-hook", 10, status="resolved"
        )
        logged = insert_notices(engine, "audit-log", 1)
        wait_for(settled(engine, keys + logged), timeout=60, what="every notice delivered", stack=stack)
        # both beats keep asking for delivery: nothing delivered may go out again
        time.sleep(3)
        assert sorted(k for k in receiver.ids("/hook") if k is not None) == sorted(keys)
        assert all(r.signature_ok for r in receiver.received), "a delivery with a bad signature"
        assert {r.body["status"] for r in receiver.received} == {"firing", "resolved"}
        assert all(attempts(engine, key) == [(True, 200)] for key in keys)
        assert attempts(engine, logged[0]) == [(True, None)]
        each_log = [(stack.home / f"worker-{i}.log").read_text() for i in range(2)]
        # both workers took part, so the claims really were contended
        assert all(" delivered, " in text for text in each_log), "one worker delivered everything"
        worker_logs = "".join(each_log)
        assert worker_logs.count(f'"webhook_id": "{logged[0]}"') == 1
        assert SECRET not in stack.logs()
    finally:
        engine.dispose()


def test_failures_are_retried_with_backoff_and_every_attempt_is_recorded(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], receiver: Receiver
) -> None:
    down = Receiver(port=free_port())  # nothing listens there yet
    stack = make_stack(make_database_url("sqlite"), notify_first_retry="1", notify_max_retry="2")
    config = "notifiers:\n" + hook("flaky", f"http://127.0.0.1:{receiver.port}/flaky")
    config += hook("refusing", f"http://127.0.0.1:{receiver.port}/refusing")
    config += hook("down", f"http://127.0.0.1:{down.port}/down")
    receiver.script = {"/flaky": [500, 500], "/refusing": [404]}
    engine = start_control_plane(stack, config, workers=1, beats=1)
    try:
        (flaky,) = insert_notices(engine, "flaky", 1)
        (refused,) = insert_notices(engine, "refusing", 1)
        (later,) = insert_notices(engine, "down", 1)
        wait_for(
            settled(engine, [flaky]), timeout=45, what="the flaky receiver's notice delivered", stack=stack
        )
        assert receiver.ids("/flaky") == [flaky] * 3
        assert attempts(engine, flaky) == [(False, 500), (False, 500), (True, 200)]

        assert attempts(engine, refused) == [(False, 404)]  # a 404 is not retried
        wait_for(
            lambda: len(attempts(engine, later)) >= 2, timeout=30, what="retries while down", stack=stack
        )
        assert all(a == (False, None) for a in attempts(engine, later))
        with Session(engine) as session:
            error = session.exec(select(AlertNotice.last_error).where(AlertNotice.dedup_key == later)).one()
        assert "ConnectError" in error
        down.start()
        try:
            wait_for(
                settled(engine, [later]), timeout=30, what="delivered once the receiver is up", stack=stack
            )
            assert down.ids("/down") == [later] and down.received[0].signature_ok
            assert attempts(engine, later)[-1] == (True, 200)
        finally:
            down.stop()
        assert receiver.ids("/refusing") == [refused]
    finally:
        engine.dispose()


def test_an_apprise_notifier_posts_through_apprise(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], receiver: Receiver
) -> None:
    pytest.importorskip("apprise", reason="the notify extra (apprise) is not installed")
    stack = make_stack(make_database_url("sqlite"))
    stack.env["APPRISE_URL"] = f"json://127.0.0.1:{receiver.port}/apprise"
    engine = start_control_plane(
        stack, "notifiers:\n  - {name: chat, kind: apprise, url: '${env:APPRISE_URL}'}\n", workers=1, beats=1
    )
    try:
        (key,) = insert_notices(engine, "chat", 1)
        wait_for(settled(engine, [key]), timeout=45, what="the apprise notice delivered", stack=stack)
        (request,) = [r for r in receiver.received if r.path == "/apprise"]
        assert request.body["title"] == "[FIRING] edge-down (page)"
        assert "no heartbeat" in request.body["message"]
    finally:
        engine.dispose()
