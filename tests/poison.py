"""Hand-made broker messages, published with redis-py as kombu's Redis transport stores them."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

NO_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def body_bytes(args: Any = None, kwargs: Any = None, embed: Any = None) -> bytes:
    """A protocol-2 Celery body, ``[args, kwargs, embed]``."""
    return json.dumps([args if args is not None else [], kwargs or {}, embed or NO_EMBED]).encode()


def headers_for(task: Any, task_id: Any = None, **extra: Any) -> dict[str, Any]:
    task_id = task_id if task_id is not None else uuid.uuid4().hex
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "attacker",
        "kwargsrepr": "{}",
        "origin": "attacker@nowhere",
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    headers.update(extra)
    return headers


def envelope(
    queue: str,
    *,
    headers: Any,
    body: bytes = b"",
    content_type: Any = "application/json",
    content_encoding: Any = "utf-8",
    **properties: Any,
) -> dict[str, Any]:
    """kombu's Redis message: base64 body, content type and encoding, headers and properties."""
    props: dict[str, Any] = {
        "correlation_id": headers.get("id") if isinstance(headers, dict) else None,
        "reply_to": None,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    props.update(properties)
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": props,
    }


def task_message(queue: str, task: str, payload: Any, **headers: Any) -> dict[str, Any]:
    """A well-formed message for ``task`` with ``payload`` as its one argument."""
    return envelope(queue, headers=headers_for(task, **headers), body=body_bytes([payload]))


def push(client: redis.Redis, queue: str, message: Any) -> None:
    """LPUSH a message (a dict is JSON-encoded; bytes and str go as they are)."""
    raw = json.dumps(message) if isinstance(message, dict | list | int | float) else message
    client.lpush(queue, raw)


def heartbeat_payload(name: str) -> dict[str, Any]:
    return {"v": 1, "name": name, "sent_at": datetime.now(UTC).isoformat()}


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


class Canary:
    """Valid messages through each queue, and whether their effect reached the database."""

    def __init__(self, *, broker_url: str, database_url: str, daemon: str) -> None:
        from cp.db import make_engine

        self.client = client_for(broker_url)
        self.engine = make_engine(database_url)
        self.daemon = daemon

    def last_probe_reply(self) -> datetime | None:
        from sqlmodel import Session, select

        from cp.models import Daemon

        with Session(self.engine) as session:
            row = session.exec(select(Daemon).where(Daemon.name == self.daemon)).first()
            return row.last_probe_reply_at if row else None

    def send_to_cp(self) -> datetime:
        """A ``cp.probe_reply`` straight onto ``mycelial.cp``; returns when it was sent."""
        sent = datetime.now(UTC)
        probe_id = uuid.uuid4().hex[:12]
        payload = {"v": 1, "name": self.daemon, "probe_id": probe_id, "sent_at": sent.isoformat()}
        push(self.client, "mycelial.cp", task_message("mycelial.cp", "cp.probe_reply", payload))
        return sent

    def send_to_daemon(self) -> datetime:
        """A ``daemon.probe`` onto the daemon's queue: only a consuming daemon answers it."""
        sent = datetime.now(UTC)
        queue = f"mycelial.daemon.{self.daemon}"
        payload = {"v": 1, "probe_id": uuid.uuid4().hex[:12], "sent_at": sent.isoformat()}
        push(self.client, queue, task_message(queue, "daemon.probe", payload))
        return sent

    def answered_since(self, sent: datetime) -> bool:
        reply = self.last_probe_reply()
        return reply is not None and reply >= sent

    def dead_letters(self, queue: str) -> list[dict[str, Any]]:
        from cp.messaging.dead_letters import read

        return read(self.client, queue, limit=10_000)
