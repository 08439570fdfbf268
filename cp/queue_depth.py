"""How many messages wait in each daemon's queue, read from the broker (Redis lists)."""

from __future__ import annotations

from celery import Celery

from cp.protocol import daemon_queue

# kombu keeps messages of priorities 3, 6 and 9 in sibling lists; plain messages use the queue name
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queue_depths(app: Celery, daemons: list[str]) -> dict[str, int]:
    """The backlog of each daemon's queue, also for an offline daemon whose messages pile up."""
    if not daemons:
        return {}
    with app.connection_for_read() as connection:
        client = connection.default_channel.client  # type: ignore[attr-defined]  # the Redis channel
        pipe = client.pipeline(transaction=False)
        for name in daemons:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(daemon_queue(name) + suffix)
        counts = pipe.execute()
    per = len(PRIORITY_SUFFIXES)
    return {name: sum(int(c) for c in counts[i * per : (i + 1) * per]) for i, name in enumerate(daemons)}
