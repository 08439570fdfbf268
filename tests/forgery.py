"""Messages an attacker with broker access would publish: unsigned, signed with a key of its own,
signed for something else, tampered with, replayed, or signed by one daemon for another."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from cp.protocol import daemon_queue
from cp.security.cp_keys import ControlPlaneKeys
from cp.security.envelope import AUTH_HEADER, CP_SENDER, daemon_sender, sign
from cp.security.keys import Identity
from tests.poison import body_bytes, envelope, headers_for, push, sign_as_control_plane


def unsigned_messages() -> None:
    """Hand-made messages from now on carry no envelope unless a test signs them itself."""
    sign_as_control_plane(None)


def cp_identity(home: Path) -> Identity:
    return ControlPlaneKeys(home).current()


def daemon_identity(home: Path, name: str) -> Identity:
    return Identity.load(home / "daemons" / name / "identity.pem")


def message(
    queue: str,
    task: str,
    payload: Any,
    *,
    identity: Identity | None,
    by: str = CP_SENDER,
    signed_task: str | None = None,
    signed_queue: str | None = None,
    signed_payload: Any = None,
    valid_for: float = 300,
    issued_ago: float = 0,
) -> dict[str, Any]:
    """A task message for ``queue``; signed by ``identity`` as ``by`` unless None, over the
    ``signed_*`` values where given (the forgery: what was signed is not what is sent)."""
    headers = headers_for(task)
    if identity is not None:
        now_ms = int((time.time() - issued_ago) * 1000)
        auth = sign(
            identity,
            by=by,
            task=signed_task or task,
            task_id=headers["id"],
            queue=signed_queue or queue,
            payload=payload if signed_payload is None else signed_payload,
            now_ms=now_ms,
            exp_ms=now_ms + int(valid_for * 1000),
        )
        headers[AUTH_HEADER] = auth.as_header()
    return envelope(queue, headers=headers, body=body_bytes([payload]))


def as_daemon(home: Path, name: str, queue: str, task: str, payload: Any, **kwargs: Any) -> dict[str, Any]:
    """Signed with daemon ``name``'s real key (a compromised edge machine)."""
    return message(
        queue, task, payload, identity=daemon_identity(home, name), by=daemon_sender(name), **kwargs
    )


def push_to_daemon(client: redis.Redis, daemon: str, msg: dict[str, Any]) -> None:
    push(client, daemon_queue(daemon), msg)
