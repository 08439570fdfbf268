"""Static beat entries. Pipeline cron schedules are not here: beat's scheduler reads them from the
database each tick, and the same tick runs the reconciler (cp/scheduler.py)."""

from __future__ import annotations

from typing import Any

from cp.celery_app import CP_CONTROL_QUEUE
from cp.protocol import CP_CHECK_DAEMON_HEALTH, CP_DELIVER_NOTICES, CP_PURGE_OLD_RECORDS, CP_SEND_PROBES
from cp.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Entries for ``app.conf.beat_schedule``, on the control queue; each expires so a stopped worker
    gets no backlog."""
    return {
        "check-daemon-health": {
            "task": CP_CHECK_DAEMON_HEALTH,
            "schedule": settings.health_check_interval,
            "options": {"queue": CP_CONTROL_QUEUE, "expires": settings.health_check_interval},
        },
        "send-probes": {
            "task": CP_SEND_PROBES,
            "schedule": settings.probe_interval,
            "options": {"queue": CP_CONTROL_QUEUE, "expires": settings.probe_interval},
        },
        "deliver-notices": {
            "task": CP_DELIVER_NOTICES,
            "schedule": settings.notify_interval,
            "options": {"queue": CP_CONTROL_QUEUE, "expires": settings.notify_interval},
        },
        "purge-old-records": {
            "task": CP_PURGE_OLD_RECORDS,
            "schedule": settings.retention_interval,
            "options": {"queue": CP_CONTROL_QUEUE, "expires": settings.retention_interval},
        },
    }
