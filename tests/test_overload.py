"""Overload and hostile data, with real processes: housekeeping is never starved by a backlog of
daemon messages, and a message whose data the database refuses is rejected once, never retried."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime

from sqlmodel import Session, col, select

from bench.raw_messages import RawTaskMessages
from cp.celery_app import CP_CONTROL_QUEUE, make_celery
from cp.db import make_engine
from cp.embedded_redis import redis_client
from cp.models import Daemon, DaemonEvent, UndeclaredDaemon
from cp.protocol import CP_CHECK_DAEMON_HEALTH, CP_DAEMON_HELLO, CP_HEARTBEAT, CP_QUEUE
from cp.settings import Settings, normalize_database_url
from tests.conftest import Stack, wait_for

BACKLOG = 20_000
DAEMONS = """daemons:
  - {name: edge-busy, labels: {site: a}}
  - {name: edge-quiet, labels: {site: a}}
"""


def heartbeat(name: str) -> dict[str, object]:
    return {"v": 1, "name": name, "sent_at": datetime.now(UTC).isoformat()}


def daemon_row(database_url: str, name: str) -> Daemon | None:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            return session.exec(select(Daemon).where(Daemon.name == name)).first()
    finally:
        engine.dispose()


def test_health_checks_run_while_a_backlog_of_daemon_messages_waits(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url("sqlite")
    stack = make_stack(database_url)
    stack.cli("apply", "-f", str(stack.write_config(DAEMONS)), check=True)
    url = stack.env["MYCELIAL_BROKER_URL"]
    client = redis_client(url)
    app = make_celery(Settings(home=stack.home), url=url)
    messages = RawTaskMessages(app, client, task=CP_HEARTBEAT, queue=CP_QUEUE)
    for _ in range(BACKLOG // 5_000):
        messages.push([messages.build(heartbeat("edge-busy")) for _i in range(5_000)])
    assert daemon_row(database_url, "edge-quiet").queue_depth is None  # type: ignore[union-attr]

    app.send_task(CP_HEARTBEAT, args=[heartbeat("edge-busy")], queue=CP_QUEUE)
    app.send_task(CP_CHECK_DAEMON_HEALTH)
    # published through the exchanges: each lands on its own queue only
    assert (client.llen(CP_QUEUE), client.llen(CP_CONTROL_QUEUE)) == (BACKLOG + 1, 1)

    stack.start("beat", "beat")
    stack.start("worker", "worker")

    # a health check records every declared daemon's queue depth: edge-quiet's shows it ran
    wait_for(
        lambda: daemon_row(database_url, "edge-quiet").queue_depth is not None,  # type: ignore[union-attr]
        timeout=120,
        what="a health check",
        stack=stack,
    )
    waiting = client.llen(CP_QUEUE)
    assert waiting > BACKLOG // 4, f"the health check ran only after the backlog drained ({waiting} left)"
    # and the heartbeats it jumped ahead of are recorded too, coalesced
    wait_for(
        lambda: (d := daemon_row(database_url, "edge-busy")) and d.last_heartbeat_at is not None,
        timeout=120,
        what="edge-busy's coalesced heartbeat",
        stack=stack,
    )


def test_a_hello_and_a_heartbeat_whose_name_the_database_refuses_are_rejected_once_and_never_retried(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url("postgres")
    stack = make_stack(database_url)
    stack.cli("apply", "-f", str(stack.write_config(DAEMONS)), check=True)
    stack.start("worker", "worker")
    app = make_celery(Settings(home=stack.home), url=stack.env["MYCELIAL_BROKER_URL"])
    # 100 kB that do not compress: far over what a PostgreSQL index entry can hold; two names,
    # since a worker notes a given undeclared name only once in a while
    huge_hello, huge_heartbeat = os.urandom(50_000).hex(), os.urandom(50_000).hex()

    hello = {"v": 1, "name": huge_hello, "software_version": "0.1"}
    app.send_task(CP_DAEMON_HELLO, args=[hello], queue=CP_QUEUE)
    app.send_task(CP_HEARTBEAT, args=[heartbeat(huge_heartbeat)], queue=CP_QUEUE)
    app.send_task(CP_HEARTBEAT, args=[heartbeat("edge-quiet")], queue=CP_QUEUE)

    wait_for(
        lambda: (d := daemon_row(database_url, "edge-quiet")) and d.last_heartbeat_at is not None,
        timeout=60,
        what="the heartbeat sent after the bad messages",
        stack=stack,
    )
    engine = make_engine(normalize_database_url(database_url))
    try:

        def rejected() -> list[DaemonEvent]:
            with Session(engine) as session:
                query = select(DaemonEvent).where(DaemonEvent.kind == "message_rejected")
                return list(session.exec(query.order_by(col(DaemonEvent.id))))

        events = wait_for(
            lambda: len(rejected()) >= 2 and rejected(), timeout=60, what="two rejections", stack=stack
        )
        with Session(engine) as session:
            assert session.exec(select(UndeclaredDaemon)).all() == []
            assert [d.name for d in session.exec(select(Daemon).order_by(col(Daemon.name)))] == [
                "edge-busy",
                "edge-quiet",
            ]
    finally:
        engine.dispose()
    assert sorted(e.reason.split(":")[0] for e in events) == [CP_DAEMON_HELLO, CP_HEARTBEAT]
    assert all(e.daemon is None and len(e.reason) < 3_000 for e in events)
    log = (stack.home / "worker.log").read_text(errors="replace")
    assert not re.search(r"\bretry\b", log, re.IGNORECASE), log[-3000:]
    assert len(log) < 200_000  # the name is never written out whole
