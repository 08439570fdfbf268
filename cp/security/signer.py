"""Signing what a Celery app publishes: every task message gets its envelope on the way out.

Celery builds a task message and hands it to ``producer.publish`` with the final routing key, so
the producer is where the envelope can cover exactly what goes on the wire. ``SigningProducer``
wraps the producer Celery uses for one message (``send_task_message`` in
cp/messaging/guarded_redis.py); retries and re-publishes go the same way and get a fresh
envelope. Event messages (Flower's) pass unsigned: they carry no command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kombu.utils.json import dumps as kombu_dumps

from cp.security.envelope import AUTH_HEADER, sign
from cp.security.keys import Identity


class Signer:
    """Signs as ``by`` with the identity ``identity()`` returns (it may change: key rotation).

    A message is valid for ``window_s`` after signing, or until its own ``expires``.
    """

    def __init__(
        self,
        identity: Callable[[], Identity],
        *,
        by: str,
        window_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._identity = identity
        self.by = by
        self.window_s = window_s
        self._clock = clock

    def header(
        self, *, task: str, task_id: str, queue: str, payload: object, expires: object = None
    ) -> dict[str, Any]:
        now_ms = int(self._clock() * 1000)
        exp_ms = _expiry_ms(expires) or now_ms + int(self.window_s * 1000)
        exp_ms = max(exp_ms, now_ms + int(self.window_s * 1000))
        identity = self._identity()
        try:
            auth = sign(
                identity,
                by=self.by,
                task=task,
                task_id=task_id,
                queue=queue,
                payload=payload,
                now_ms=now_ms,
                exp_ms=exp_ms,
            )
        except (TypeError, ValueError):
            # a type kombu's encoder knows (a datetime, say): sign what the receiver will decode
            payload = json.loads(kombu_dumps(payload))
            auth = sign(
                identity,
                by=self.by,
                task=task,
                task_id=task_id,
                queue=queue,
                payload=payload,
                now_ms=now_ms,
                exp_ms=exp_ms,
            )
        return auth.as_header()


def _expiry_ms(expires: object) -> int | None:
    """Celery's ``expires`` header (an ISO 8601 time) in ms since the epoch."""
    if not isinstance(expires, str):
        return None
    try:
        when = datetime.fromisoformat(expires)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def payload_of(body: object) -> object:
    """The one positional argument of a protocol-2 body ``[args, kwargs, embed]`` (None without)."""
    if isinstance(body, list | tuple) and len(body) == 3 and isinstance(body[0], list | tuple):
        return body[0][0] if body[0] else None
    return None


class SigningProducer:
    """A kombu producer whose task messages leave signed."""

    def __init__(self, producer: Any, signer: Signer, task: str) -> None:
        self._producer = producer
        self._signer = signer
        self._task = task

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        headers = kwargs.get("headers")
        if isinstance(body, list | tuple) and len(body) == 3 and isinstance(headers, dict):
            headers[AUTH_HEADER] = self._signer.header(
                task=self._task,
                task_id=str(headers.get("id")),
                queue=str(kwargs.get("routing_key") or ""),
                payload=payload_of(body),
                expires=headers.get("expires"),
            )
        return self._producer.publish(body, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)
