"""The bounded dead-letter list of a queue: the newest rejected messages, with why and when."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from cp.messaging.envelope_check import Rejection

DEAD_LETTER_PREFIX = "mycelial.dead."


def dead_letter_key(queue: str) -> str:
    return f"{DEAD_LETTER_PREFIX}{queue}"


def store(client: Any, rejection: Rejection, *, keep: int, now: datetime) -> None:
    """Keep ``rejection`` as the newest entry of its queue's list, and only the ``keep`` newest."""
    entry = json.dumps(
        {
            "at": now.isoformat(),
            "queue": rejection.queue,
            "reason": rejection.reason,
            "task": rejection.task,
            "task_id": rejection.task_id,
            "copy": rejection.copy,
        }
    )
    key = dead_letter_key(rejection.queue)
    client.pipeline().lpush(key, entry).ltrim(key, 0, keep - 1).execute()


def read(client: Any, queue: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead-lettered entries of ``queue``, newest first."""
    return [json.loads(raw) for raw in client.lrange(dead_letter_key(queue), 0, limit - 1)]
