"""Start one long-running process: control-plane worker, beat, Flower or a daemon."""

from __future__ import annotations

import math
import os
import re
import secrets
from pathlib import Path

from beat_schedule import beat_schedule
from cp.beat import make_scheduler_class
from cp.broker_reconnect import consuming_step
from cp.celery_app import CP_WORKER_QUEUES, make_celery, worker_argv
from cp.cli.output import EXIT_BAD_INPUT, CliError
from cp.cli.restart import start_worker
from cp.models import utcnow
from cp.protocol import NAME_PATTERN, daemon_queue
from cp.runtime import ControlPlane
from cp.settings import Settings
from cp.tasks import register_cp_tasks
from cp.tls.flower import verify_flower_broker_client
from workers.orphans import orphaned_jobs
from workers.runtime import DaemonRuntime
from workers.tasks import lifecycle_step, register_daemon_tasks

DAEMON_NAME = re.compile(NAME_PATTERN)
FLOWER_USER = "admin"


def control_plane(settings: Settings) -> ControlPlane:
    """A ControlPlane whose Celery app (created on first use) carries the cp.* tasks."""
    app = make_celery(settings)
    cp = ControlPlane(settings, app)
    register_cp_tasks(app, cp)
    return cp


def run_worker(settings: Settings, *, pool: str, concurrency: int, loglevel: str) -> None:
    cp = control_plane(settings)
    _ = cp.engine  # fail now, not on the first message, if the database is unreachable
    cp.app.steps["consumer"].add(consuming_step(lambda: setattr(cp, "consuming_since", utcnow())))
    argv = worker_argv(
        queues=CP_WORKER_QUEUES, hostname="cp@%h", pool=pool, concurrency=concurrency, loglevel=loglevel
    )
    start_worker(cp.app, argv, what="the control-plane worker")


def run_beat(settings: Settings, *, loglevel: str) -> None:
    cp = control_plane(settings)
    _ = cp.engine
    cp.app.conf.beat_schedule = beat_schedule(settings)
    beat = cp.app.Beat(
        scheduler=make_scheduler_class(cp),  # type: ignore[arg-type]  # a class works as well as a dotted name
        max_interval=max(1, math.ceil(settings.schedule_poll_interval)),
        loglevel=loglevel,
    )
    beat.run()


def parse_labels(text: str) -> dict[str, str]:
    """``site=berlin,tier=edge`` → ``{"site": "berlin", "tier": "edge"}``."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--labels: expected key=value pairs, got {part!r}", code=EXIT_BAD_INPUT)
        labels[key.strip()] = value.strip()
    return labels


def run_daemon(
    settings: Settings,
    *,
    name: str,
    labels: dict[str, str],
    pool: str,
    concurrency: int,
    loglevel: str,
) -> None:
    if not DAEMON_NAME.match(name):
        raise CliError(
            f"--name: invalid daemon name {name!r} (letters, digits, '_', '.', '-'; at most 63)",
            code=EXIT_BAD_INPUT,
        )
    app = make_celery(settings, name=f"daemon-{name}", daemon=name)
    # before the worker consumes: what is held then was held by an earlier process
    orphaned = orphaned_jobs(app, daemon_queue(name))
    daemon = DaemonRuntime(settings, app, name=name, labels=labels, orphaned_task_ids=orphaned)
    register_daemon_tasks(app, daemon)
    app.steps["worker"].add(lifecycle_step(daemon))
    argv = worker_argv(
        queues=(daemon_queue(name),),
        hostname=f"daemon@{name}",
        pool=pool,
        concurrency=concurrency,
        loglevel=loglevel,
    )
    start_worker(
        app, argv, what=f"daemon {name}", finish=lambda restarting: daemon.finish(wait_for_jobs=restarting)
    )


def flower_credentials(home: Path) -> tuple[str, str]:
    """Basic-auth credentials for Flower, generated once and kept (mode 0600) in the home dir."""
    path = home / "flower-credentials"
    if path.exists():
        user, _, password = path.read_text(encoding="utf-8").strip().partition(":")
        if user and password:
            return user, password
    home.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"{FLOWER_USER}:{password}\n")
    return FLOWER_USER, password


def run_flower(settings: Settings, *, address: str, port: int) -> None:
    app = make_celery(settings)
    verify_flower_broker_client()  # its broker page verifies a rediss:// broker like every process
    user, password = flower_credentials(settings.home)
    # through the environment, so the password does not show in `ps`
    os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    app.start(["flower", f"--address={address}", f"--port={port}", "--purge_offline_workers=60"])
