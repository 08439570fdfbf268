"""Heartbeat keys against a real worker and a real Redis: a daemon's key is read within a flush,
a bad key is rejected once and recorded, and none of it stops the reading of the others."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlmodel import Session, col, select

from cp.db import make_engine
from cp.embedded_redis import redis_client
from cp.models import Daemon, DaemonEvent, DaemonKey, utcnow
from cp.protocol import (
    CP_HEARTBEAT,
    HEARTBEAT_KEY_TTL_SECONDS,
    HEARTBEAT_MAX_BYTES,
    HEARTBEAT_TASK_ID,
    heartbeat_key,
)
from cp.security.envelope import daemon_sender
from cp.security.keys import Identity
from cp.security.signer import Signer
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.integration

DAEMONS = """daemons:
  - {name: edge-a}
  - {name: edge-b}
  - {name: edge-c}
  - {name: edge-d}
"""


KEYS = {name: Identity.generate() for name in ("edge-a", "edge-b", "edge-c", "edge-d")}


def enrol_all(database_url: str) -> None:
    """The four daemons' keys, as enrolment would have registered them."""
    engine = make_engine(normalize_database_url(database_url))
    with Session(engine) as session:
        for name, key in KEYS.items():
            session.add(
                DaemonKey(name=name, key_id=key.key_id, public_key=key.public_text, enrolled_at=utcnow())
            )
        session.commit()
    engine.dispose()


def heartbeat(name: str, *, signed_by: str | None = None, **extra: object) -> str:
    """A key's value as daemon ``signed_by`` (default ``name``) writes it."""
    beat = {"v": 1, "name": name, "sent_at": datetime.now(UTC).isoformat(), **extra}
    signer_name = signed_by or name
    signer = Signer(lambda: KEYS[signer_name], by=daemon_sender(signer_name), window_s=300)
    key = heartbeat_key(signed_by or name)
    auth = signer.header(task=CP_HEARTBEAT, task_id=HEARTBEAT_TASK_ID, queue=key, payload=beat)
    return json.dumps({"auth": auth, "beat": beat})


def test_bad_heartbeat_keys_are_rejected_once_and_good_ones_are_recorded(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url("sqlite")
    stack = make_stack(database_url)
    stack.cli("apply", "-f", str(stack.write_config(DAEMONS)), check=True)
    enrol_all(database_url)
    client = redis_client(stack.env["MYCELIAL_BROKER_URL"])
    ttl = HEARTBEAT_KEY_TTL_SECONDS
    client.set(
        heartbeat_key("edge-a"), heartbeat("edge-b", signed_by="edge-a", memory_mb=666), ex=ttl
    )  # for another
    client.set(heartbeat_key("edge-b"), b"[" * (HEARTBEAT_MAX_BYTES + 1), ex=ttl)  # too big
    client.rpush(heartbeat_key("edge-c"), "not", "a", "string")
    client.set(heartbeat_key("edge-d"), heartbeat("edge-d", memory_mb=42), ex=ttl)
    stack.start("worker", "worker")

    engine = make_engine(normalize_database_url(database_url))
    try:

        def rows() -> dict[str, Daemon]:
            with Session(engine) as session:
                return {d.name: d for d in session.exec(select(Daemon))}

        def rejected() -> list[DaemonEvent]:
            with Session(engine) as session:
                query = select(DaemonEvent).where(col(DaemonEvent.kind).in_(["message_rejected", "security"]))
                return list(session.exec(query.order_by(col(DaemonEvent.id))))

        wait_for(lambda: rows()["edge-d"].memory_mb == 42, timeout=60, what="edge-d's heartbeat", stack=stack)
        wait_for(lambda: len(rejected()) >= 3, timeout=30, what="three rejections", stack=stack)
        time.sleep(2)  # several more flushes: each bad key is still rejected only once
        events = rejected()
        assert sorted((e.daemon, e.kind, e.reason.split(": ", 1)[1][:30]) for e in events) == [
            ("edge-a", "security", "heartbeat not authenticated: d"),
            ("edge-b", "message_rejected", "heartbeat key holds more than "),
            ("edge-c", "message_rejected", "heartbeat key is not a string"),
        ]
        assert (
            "daemon edge-a sent cp.heartbeat in the name of 'edge-b'"
            in events[0].reason + events[1].reason + events[2].reason
        )
        daemons = rows()
        assert [n for n, d in daemons.items() if d.last_heartbeat_at is not None] == ["edge-d"]
        assert daemons["edge-b"].memory_mb is None  # edge-a's key spoke for edge-b: not applied

        # a daemon that fixes its key is heard at once
        client.delete(heartbeat_key("edge-c"))
        client.set(heartbeat_key("edge-c"), heartbeat("edge-c", memory_mb=7), ex=ttl)
        wait_for(lambda: rows()["edge-c"].memory_mb == 7, timeout=30, what="edge-c's heartbeat", stack=stack)
    finally:
        engine.dispose()
