"""How long the oldest message of each daemon's queue has waited, read from the broker.

kombu's Redis transport LPUSHes and BRPOPs, so the oldest message is the list's last element; its
age comes from the signed envelope's ``at`` (docs/security.md). Only the plain list is read (the
priority siblings hold no older work in practice); a message that cannot be read has no age.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from celery import Celery

from cp.protocol import daemon_queue
from cp.security.envelope import AUTH_HEADER

MAX_MESSAGE_BYTES = 1_000_000


def oldest_ages(app: Celery, daemons: list[str], *, now: datetime) -> dict[str, float | None]:
    """Seconds the oldest message of each daemon's queue has waited; None for an empty queue."""
    if not daemons:
        return {}
    with app.connection_for_read() as connection:
        client = connection.default_channel.client  # type: ignore[attr-defined]  # the Redis channel
        pipe = client.pipeline(transaction=False)
        for name in daemons:
            pipe.lindex(daemon_queue(name), -1)
        tails = pipe.execute()
    return {name: message_age(tail, now=now) for name, tail in zip(daemons, tails, strict=True)}


def message_age(raw: Any, *, now: datetime) -> float | None:
    """The age of one kombu message from its envelope's ``at`` (ms since the epoch)."""
    if not isinstance(raw, bytes | str) or len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        message = json.loads(raw)
        at = message["headers"][AUTH_HEADER]["at"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(at, int) or isinstance(at, bool):
        return None
    return max(0.0, now.timestamp() - at / 1000)
