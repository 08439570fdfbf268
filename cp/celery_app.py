"""Celery app factory: queue topology, serialization and events as DESIGN section 2 sets them."""

from __future__ import annotations

import math
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from cp.broker_reconnect import consumer_settings
from cp.messaging.guard import Guard
from cp.messaging.install import guarded_celery
from cp.protocol import (
    CP_CHECK_DAEMON_HEALTH,
    CP_DELIVER_NOTICES,
    CP_PURGE_OLD_RECORDS,
    CP_QUEUE,
    CP_SEND_PROBES,
)
from cp.security.cp_keys import ControlPlaneKeys
from cp.security.envelope import CP_SENDER
from cp.security.signer import Signer
from cp.settings import Settings, SettingsError
from cp.tls.broker import is_tls_url, url_tls_problem
from cp.tls.context import TlsConfigError

# Beat-driven housekeeping (health checks, probes, retention) has its own queue, consumed by every
# control-plane worker beside mycelial.cp, so it never waits behind a backlog of daemon messages.
# Daemons never publish here. kombu's Redis transport BRPOPs both keys and moves the queue it just
# took a message from to the end of the list (round-robin), so a waiting control task is served
# after at most one daemon message.
CP_CONTROL_QUEUE = "mycelial.cp.control"
CP_WORKER_QUEUES = (CP_CONTROL_QUEUE, CP_QUEUE)
HOUSEKEEPING_TASKS = (CP_CHECK_DAEMON_HEALTH, CP_SEND_PROBES, CP_PURGE_OLD_RECORDS, CP_DELIVER_NOTICES)


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


def make_celery(
    settings: Settings, *, name: str = "mycelial", url: str | None = None, daemon: str | None = None
) -> Celery:
    """A Celery app with no tasks registered; roles add theirs (cp.tasks, workers.tasks).

    ``daemon`` names the daemon whose queue the app consumes; without it the app is the control
    plane's (its workers, and every publisher-only process: CLI, beat, Flower). Its consumers are
    guarded (cp/messaging/): no message can stop them.
    """
    url = url or broker_url(settings)
    guard = Guard(settings)
    if daemon is None:
        # every control-plane process signs what it publishes with the control plane's key (made
        # on first use); a daemon's app gets its own signer once its key is loaded (run_daemon)
        keys = ControlPlaneKeys(settings.home)
        guard.signer = Signer(keys.current, by=CP_SENDER, window_s=settings.replay_window)
    app = guarded_celery(name, broker=url, guard=guard)
    app.conf.update(_celery_config(settings, daemon=daemon))
    ssl_options = broker_use_ssl(settings, url)
    if ssl_options is not None:
        app.conf.broker_use_ssl = ssl_options
    return app


def daemon_hostname(name: str) -> str:
    """The Celery node name of daemon ``name``; its remote-control queue is ``<hostname>.celery.pidbox``."""
    return f"daemon@{name}"


def unacked_keys(*, daemon: str | None) -> dict[str, str]:
    """The Redis keys where a consumer (a daemon, or with None the control plane) keeps the
    messages it holds: ``unacked_key``, ``unacked_index_key`` and ``unacked_mutex_key``."""
    owner = "cp" if daemon is None else f"daemon.{daemon}"
    return {
        "unacked_key": f"unacked.{owner}",
        "unacked_index_key": f"unacked_index.{owner}",
        "unacked_mutex_key": f"unacked_mutex.{owner}",
    }


def broker_use_ssl(settings: Settings, url: str) -> dict[str, Any] | None:
    """Celery's TLS options for a ``rediss://`` broker (cp/tls/broker.py): always verified, never
    kombu's unverified default; None for other URLs."""
    if not is_tls_url(url):
        return None
    problem = url_tls_problem(url)
    tls = settings.broker_tls
    if problem is None:
        try:
            tls.context()  # an unusable file is a settings error now, not a connection retried forever
        except TlsConfigError as exc:
            problem = str(exc)
    if problem:
        raise SettingsError(f"invalid settings: broker TLS: {problem}")
    return tls.redis_options()


def unacked_options(settings: Settings, *, daemon: str | None) -> dict[str, Any]:
    """Where a consumer keeps the messages it holds, and when Redis hands them out again.

    kombu keeps every consumer's in-flight messages in one hash and restores those older than the
    *restoring* consumer's visibility timeout: with one shared hash a control-plane worker's
    minute would hand a daemon's hour-long job to it a second time. Own keys per consumer keep
    each timeout to its own messages (and let broker ACLs give a daemon only its own).
    """
    keys = unacked_keys(daemon=daemon)
    if daemon is not None:
        return {
            **keys,
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.unacked_restore_interval,
        }
    return {
        **keys,
        "visibility_timeout": settings.cp_visibility_timeout,
        "unacked_restore_interval": settings.cp_unacked_restore_interval,
        # a worker killed during a restore scan holds the mutex until it expires (kombu: 5 min)
        "unacked_mutex_expire": max(10, math.ceil(settings.cp_visibility_timeout / 2)),
    }


def _direct(name: str, *, declare: bool = True) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name, no_declare=not declare)


def _daemon_only(daemon: str | None) -> dict[str, Any]:
    """What a daemon's app does differently so its broker user can be confined (cp/broker_acl.py).

    Celery declares a queue before publishing to it, and on Redis declaring binds it: a SADD to
    ``_kombu.binding.mycelial.cp``. A daemon allowed that could bind its own queue to the control
    plane's exchange, so it never declares the control plane's queues: it only pushes to
    ``mycelial.cp`` (the workers declare it). Its remote-control queue gets no expiry, so kombu
    binds it with a plain SADD instead of scripts on ``_kombu.binding_deadlines`` (shared by every
    consumer; a client that may write there can schedule other exchanges' bindings for deletion).
    """
    if daemon is None:
        return {"task_queues": [_direct(CP_QUEUE), _direct(CP_CONTROL_QUEUE)]}
    return {
        "task_queues": [_direct(CP_QUEUE, declare=False), _direct(CP_CONTROL_QUEUE, declare=False)],
        "control_queue_expires": None,
    }


def _celery_config(settings: Settings, *, daemon: str | None) -> dict[str, Any]:
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        # outcomes live in SQL; a result backend would only add Redis garbage
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": CP_QUEUE,
        # each queue its own exchange and key: a queue left to Celery's defaults would be bound to
        # mycelial.cp's, and every daemon message would be copied onto the control queue
        **_daemon_only(daemon),
        "task_routes": {
            **{name: {"queue": CP_CONTROL_QUEUE} for name in HOUSEKEEPING_TASKS},
            "cp.*": {"queue": CP_QUEUE},
        },
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
            # a message unacked past the visibility timeout (its consumer died) is handed out again
            **unacked_options(settings, daemon=daemon),
            # scan on every restore interval (kombu's default scans every 10th, about 100 s)
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


def worker_argv(
    *, queues: tuple[str, ...], hostname: str, pool: str, concurrency: int, loglevel: str
) -> list[str]:
    """Arguments for ``app.worker_main``: the given queues, gossip and mingle off."""
    return [
        "worker",
        f"--queues={','.join(queues)}",
        f"--hostname={hostname}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
