"""Celery app factory: queue topology, serialization and events as DESIGN section 2 sets them."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from cp.broker_reconnect import consumer_settings
from cp.protocol import CP_QUEUE
from cp.settings import Settings


class BrokerNotConfiguredError(RuntimeError):
    pass


def broker_url(settings: Settings) -> str:
    """MYCELIAL_BROKER_URL, else the embedded Redis socket that ``mycelial up`` runs."""
    if settings.broker_url:
        return settings.broker_url
    socket = settings.embedded_redis_socket
    if socket.exists():
        return f"redis+socket://{socket}"
    raise BrokerNotConfiguredError(
        f"no broker: set MYCELIAL_BROKER_URL (e.g. redis://127.0.0.1:6379/0) or start `mycelial up` "
        f"(no embedded Redis socket at {socket})"
    )


def make_celery(settings: Settings, *, name: str = "mycelial", url: str | None = None) -> Celery:
    """A Celery app with no tasks registered; roles add theirs (cp.tasks, workers.tasks)."""
    app = Celery(name, broker=url or broker_url(settings), set_as_current=False)
    app.conf.update(_celery_config(settings))
    return app


def _celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        # outcomes live in SQL; a result backend would only add Redis garbage
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": CP_QUEUE,
        "task_queues": [Queue(CP_QUEUE)],
        "task_routes": {"cp.*": {"queue": CP_QUEUE}},
        "task_create_missing_queues": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
        # edge daemons outlive broker outages of any length: reconnect forever
        "broker_connection_max_retries": None,
        **consumer_settings(),
        "broker_transport_options": {
            # Redis redelivers a message unacked for this long (its worker died): above any job
            "visibility_timeout": settings.visibility_timeout,
            # how often consumers look for such messages (kombu's default is about 100 s)
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": 1,
            # without these a publish on a dead TCP connection waits forever
            "socket_timeout": 15,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 10,
        },
        "enable_utc": True,
        "timezone": "UTC",
    }


def worker_argv(*, queue: str, hostname: str, pool: str, concurrency: int, loglevel: str) -> list[str]:
    """Arguments for ``app.worker_main``: one queue, gossip and mingle off."""
    return [
        "worker",
        f"--queues={queue}",
        f"--hostname={hostname}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
