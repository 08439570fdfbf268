"""Job messages an earlier process of this daemon took from its queue and never finished.

With Redis, a message a consumer has taken and not acknowledged waits in kombu's unacked hash
until the visibility timeout (hours) puts it back in its queue. Each daemon has a hash of its own
(``unacked.daemon.<name>``, cp/celery_app.py). A daemon that starts again after dying finds there the
jobs its earlier process held: it removes them, and its hello names their task ids, so the control
plane retries those runs at once (the destination's state lets them resume). Only this daemon
consumes its queue and uses its hash, so whatever of its queue is in the hash before it starts
consuming was held by an earlier process.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)


def take_orphaned_jobs(client: Any, *, queue: str, unacked_key: str, unacked_index_key: str) -> list[str]:
    """Remove the unacknowledged messages of ``queue`` from the daemon's hash; return their task ids."""
    found: list[str] = []
    for tag, raw in list(client.hscan_iter(unacked_key)):
        try:
            message, _exchange, routing_key = json.loads(raw)
            task_id = (message.get("headers") or {}).get("id")
        except (ValueError, TypeError, AttributeError):
            continue  # not a kombu entry: not ours to touch
        if routing_key != queue:
            continue
        client.pipeline().zrem(unacked_index_key, tag).hdel(unacked_key, tag).execute()
        if task_id:
            found.append(str(task_id))
    return found


def orphaned_jobs(app: Celery, queue: str) -> list[str]:
    """``take_orphaned_jobs`` on the keys of the daemon's app (``make_celery(daemon=...)``); nothing
    for other transports (AMQP brokers give unacknowledged messages back when the connection closes)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2)
            if conn.transport.driver_type != "redis":
                return []
            channel: Any = conn.default_channel
            found = take_orphaned_jobs(
                channel.client,
                queue=queue,
                unacked_key=channel.unacked_key,
                unacked_index_key=channel.unacked_index_key,
            )
    except Exception as exc:  # the broker may be down: the control plane's reconciler covers it later
        log.warning("could not look for jobs an earlier process of this daemon held: %s", exc)
        return []
    if found:
        log.warning("jobs held by an earlier process of this daemon: %s", ", ".join(found))
    return found
