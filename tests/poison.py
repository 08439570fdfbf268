"""Hand-made broker messages, published with redis-py as kombu's Redis transport stores them."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from cp import embedded_redis
from cp.security.cp_keys import ControlPlaneKeys
from cp.security.envelope import AUTH_HEADER, CP_SENDER
from cp.security.signer import Signer, payload_of
from tests.conftest import Stack, wait_for

DAEMON = "edge-guard"

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


_signer: Signer | None = None


def sign_as_control_plane(home: Path | None) -> None:
    """From now on, hand-made messages carry a valid envelope signed with the control-plane key
    under ``home`` (None: unsigned), so that they reach the checks after authentication: these
    tests are about malformed messages, tests/test_forgery.py about unauthenticated ones."""
    global _signer
    _signer = None if home is None else Signer(ControlPlaneKeys(home).current, by=CP_SENDER, window_s=300)


def _signed(headers: Any, body: bytes, queue: str) -> Any:
    if _signer is None or not isinstance(headers, dict) or AUTH_HEADER in headers:
        return headers
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not isinstance(task_id, str):
        return headers
    try:
        payload = payload_of(json.loads(body))
    except ValueError:
        payload = None
    try:
        auth = _signer.header(task=task, task_id=task_id, queue=queue, payload=payload)
    except (TypeError, ValueError):
        return headers
    return {**headers, AUTH_HEADER: auth}


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
    headers = _signed(headers, body, queue)
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
    return embedded_redis.redis_client(url)  # type: ignore[no-any-return]


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
        """The queue's dead-letter list (docs/protocol.md), newest first."""
        return [json.loads(raw) for raw in self.client.lrange(f"mycelial.dead.{queue}", 0, -1)]


def start_guarded_stack(home: Path, broker_url: str) -> tuple[Stack, Canary]:
    """A control-plane worker and one daemon on a SQLite database, both consuming."""
    database_url = f"sqlite:///{home / 'cp.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env.update(
        MYCELIAL_HOME=str(home),
        MYCELIAL_BROKER_URL=broker_url,
        MYCELIAL_DATABASE_URL=database_url,
        MYCELIAL_HEARTBEAT_INTERVAL="1",
        PYTHONUNBUFFERED="1",
    )
    stack = Stack(home=home, env=env)
    stack.start("worker", "worker", "--concurrency", "2")
    # only a declared daemon is probed and has its probe replies recorded (docs/health.md)
    config = stack.write_config(f"daemons:\n  - name: {DAEMON}\n")
    stack.cli("apply", "-f", str(config), check=True)
    stack.start("daemon", "daemon", "--name", DAEMON)
    sign_as_control_plane(home)
    canary = Canary(broker_url=broker_url, database_url=database_url, daemon=DAEMON)
    stack.wait_online(DAEMON, timeout=90)
    return stack, canary


def assert_both_queues_still_consume(stack: Stack, canary: Canary) -> None:
    sent = canary.send_to_cp()
    wait_for(lambda: canary.answered_since(sent), timeout=30, what="a probe reply on the cp", stack=stack)
    sent = canary.send_to_daemon()
    wait_for(lambda: canary.answered_since(sent), timeout=30, what="the daemon's probe reply", stack=stack)
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} exited\n{stack.logs()}"
    assert "unrecoverable error" not in stack.logs(), stack.logs()


def catalogue(queue: str, task: str) -> list[tuple[str, Any]]:
    """Every malformed message we could think of, for ``queue`` whose consumer runs ``task``."""

    def headers(**changes: Any) -> dict[str, Any]:
        result = headers_for(task)
        for key, value in changes.items():
            if value is ...:
                result.pop(key, None)
            else:
                result[key] = value
        return result

    good_body = body_bytes([{"v": 1}])
    hello = {"v": 1, "name": "forged", "software_version": "0"}
    forged = {"task": "cp.daemon_hello", "args": [hello], "kwargs": {}, "options": {}, "immutable": True}
    items: list[tuple[str, Any]] = [
        ("not json", "this is not json {"),
        ("binary", b"\xff\xfe\x00garbage"),
        ("empty", b""),
        ("number", 5),
        ("list", [1, 2, 3]),
        ("empty object", {}),
        ("deep nesting", "[" * 100_000 + "]" * 100_000),
        ("oversized", json.dumps({"body": "A" * (9 * 2**20)})),
        ("no properties", {"body": "", "headers": {}}),
        ("properties a list", envelope(queue, headers=headers()) | {"properties": []}),
        ("bad base64", envelope(queue, headers=headers(), body=good_body) | {"body": "%%%"}),
        ("headers a list", envelope(queue, headers=["task"], body=good_body)),
        (
            "wrong routing key",
            envelope(
                queue,
                headers=headers(),
                body=good_body,
                delivery_info={"exchange": "", "routing_key": "mycelial.daemon.other"},
            ),
        ),
        ("body encoding", envelope(queue, headers=headers(), body=good_body, body_encoding="rot13")),
        ("delivery tag a dict", envelope(queue, headers=headers(), body=good_body, delivery_tag={"a": 1})),
        (
            "pickle",
            envelope(
                queue,
                headers=headers(),
                body=b"\x80\x04K\x05.",
                content_type="application/x-python-serialize",
            ),
        ),
        ("yaml", envelope(queue, headers=headers(), body=b"- 1", content_type="application/x-yaml")),
        ("binary encoding", envelope(queue, headers=headers(), body=good_body, content_encoding="binary")),
        ("compressed", envelope(queue, headers=headers(compression="application/x-gzip"), body=b"\x1f\x8b")),
    ]
    for name, changes in {
        "task a list": {"task": [task]},
        "task a number": {"task": 7},
        "task missing": {"task": ...},
        "unknown task": {"task": "cp.no_such_task"},
        "celery built-in": {"task": "celery.chord_unlock"},
        "id missing": {"id": ...},
        "id a list": {"id": ["x"]},
        "id huge": {"id": "x" * 100_000},
        "eta garbage": {"eta": "tomorrow"},
        "eta a number": {"eta": 12},
        "eta next year": {"eta": "2099-01-01T00:00:00+00:00"},
        "expires garbage": {"expires": {"a": 1}},
        "retries a string": {"retries": "3"},
        "retries negative": {"retries": -5},
        "timelimit an int": {"timelimit": 5},
        "timelimit short": {"timelimit": [1]},
        "timelimit strings": {"timelimit": ["a", "b"]},
        "argsrepr huge": {"argsrepr": "x" * 100_000},
        "argsrepr a dict": {"argsrepr": {"a": 1}},
        "origin a list": {"origin": [1]},
        "group index a string": {"group_index": "1"},
        "stamps": {"stamped_headers": ["x"], "stamps": {"x": "y"}},
        "lang js": {"lang": "js"},
        "many headers": {f"x-{i}": i for i in range(100)},
    }.items():
        items.append((f"header {name}", envelope(queue, headers=headers(**changes), body=good_body)))
    for name, body in {
        "body empty object": b"{}",
        "body a number": b"5",
        "body two items": b"[[], {}]",
        "body four items": b"[[], {}, {}, 1]",
        "body not utf-8": b"\xff\xfe",
        "body not json": b"[[], {",
        "body bad type hook": b'[[{"__type__": "datetime", "__value__": "never"}], {}, {}]',
        "body args an object": b"[{}, {}, {}]",
        "body two args": b"[[1, 2], {}, {}]",
        "body kwargs": b'[[], {"name": "x"}, {}]',
        "body embed a list": b"[[], {}, []]",
        "body payload a string": b'[["hello"], {}, {}]',
        "body payload wrong version": b'[[{"v": 2}], {}, {}]',
        "body huge payload": json.dumps([[{"v": 1, "name": "x" * 5_000_000}], {}, {}]).encode(),
    }.items():
        items.append((name, envelope(queue, headers=headers(), body=body)))
    for key in ("callbacks", "errbacks", "chain"):
        embed = {**NO_EMBED, key: [forged]}
        items.append(
            (f"forged {key}", envelope(queue, headers=headers(), body=body_bytes([{"v": 1}], {}, embed)))
        )
    chord = {**NO_EMBED, "chord": forged}
    items.append(("forged chord", envelope(queue, headers=headers(), body=body_bytes([{"v": 1}], {}, chord))))
    return items
