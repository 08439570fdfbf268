"""Housekeeping tasks Flower never lists: nobody sends a task event about them.

A task's events come from two places. Its worker sends task-received, -started, -succeeded and the
rest only while the task's ``send_events`` is true (celery/worker/strategy.py, Request.send_event),
so each of these tasks is registered with ``send_events=False``. Its producer sends ``task-sent``
whenever the app's ``task_send_sent_event`` is on, whatever the task (``Celery.send_task`` hands the
setting to ``create_task_message``): ``without_sent_event`` drops that one for these names where
every message is published (GuardedAMQP in cp/messaging/guarded_redis.py). Flower makes a row of
the first event it sees with a task's id, ``task-sent`` included, so both are needed.
"""

from __future__ import annotations

from typing import Any

from cp.protocol import (
    CP_CHECK_DAEMON_HEALTH,
    CP_DELIVER_NOTICES,
    CP_HEARTBEAT,
    CP_LOGS,
    CP_MESSAGE_REJECTED,
    CP_PROBE_REPLY,
    CP_PURGE_OLD_RECORDS,
    CP_SEND_PROBES,
    DAEMON_PROBE,
    DAEMON_TRUST_KEYS,
)

# health checks and probes every second or so, heartbeats, log batches: they would bury the runs
# in Flower's list and push them out of its history (docs/monitoring.md)
UNLISTED_TASKS = frozenset(
    {
        CP_CHECK_DAEMON_HEALTH,
        CP_SEND_PROBES,
        CP_DELIVER_NOTICES,  # every second, from beat (cp/alerts/delivery_task.py)
        CP_PURGE_OLD_RECORDS,
        DAEMON_PROBE,
        CP_PROBE_REPLY,
        CP_HEARTBEAT,
        CP_MESSAGE_REJECTED,
        DAEMON_TRUST_KEYS,
        CP_LOGS,
    }
)


def without_sent_event(name: str, message: Any) -> Any:
    """Celery's task message ``(headers, properties, body, sent_event)``, without the ``task-sent``
    event when ``name`` is a housekeeping task."""
    if name in UNLISTED_TASKS and getattr(message, "sent_event", None) is not None:
        return message._replace(sent_event=None)
    return message
