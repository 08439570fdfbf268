"""Start one long-running process: control-plane worker, beat or a daemon (Flower: flower_server)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from beat_schedule import beat_schedule
from cp.beat import make_scheduler_class
from cp.broker_reconnect import consuming_step
from cp.celery_app import CP_WORKER_QUEUES, daemon_hostname, make_celery, worker_argv
from cp.cli.output import EXIT_BAD_INPUT, CliError
from cp.cli.restart import start_worker
from cp.messaging.install import guard_of
from cp.metrics.worker_counters import count_in_beat
from cp.models import utcnow
from cp.protocol import NAME_PATTERN, daemon_queue
from cp.runtime import ControlPlane
from cp.security.envelope import daemon_sender
from cp.security.signer import Signer
from cp.settings import Settings
from cp.tasks import register_cp_tasks
from workers.confinement.policy import Confinement, ConfinementSettingError, create_data_folder
from workers.identity import DaemonKeyStore, NotEnrolledError
from workers.orphans import orphaned_jobs
from workers.runtime import DaemonRuntime
from workers.tasks import lifecycle_step, register_daemon_tasks
from workers.trust import DaemonAuthenticator

DAEMON_NAME = re.compile(NAME_PATTERN)


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
    counting = count_in_beat(cp.app, settings)  # runs the scheduler finishes, for /metrics
    try:
        beat.run()
    finally:
        counting.stop()


def parse_labels(text: str) -> dict[str, str]:
    """``site=berlin,tier=edge`` → ``{"site": "berlin", "tier": "edge"}``."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--labels: expected key=value pairs, got {part!r}", code=EXIT_BAD_INPUT)
        labels[key.strip()] = value.strip()
    return labels


def read_token_file(path: Path) -> str:
    """The enrolment token in ``path`` (a few hundred bytes at most)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(4_097)
    except OSError as exc:
        raise CliError(
            f"--enroll-token-file: cannot read {path}: {exc.strerror}", code=EXIT_BAD_INPUT
        ) from None
    if len(raw) > 4_096:
        raise CliError(f"--enroll-token-file: {path} is too big for a token", code=EXIT_BAD_INPUT)
    return raw.decode("utf-8", errors="replace").strip()


def run_daemon(
    settings: Settings,
    *,
    name: str,
    labels: dict[str, str],
    pool: str,
    concurrency: int,
    loglevel: str,
    enroll_token: str | None = None,
    allow_roots: Sequence[str] = (),
) -> None:
    if not DAEMON_NAME.match(name):
        raise CliError(
            f"--name: invalid daemon name {name!r} (letters, digits, '_', '.', '-'; at most 63)",
            code=EXIT_BAD_INPUT,
        )
    try:
        confinement = Confinement.from_settings(settings, daemon=name, extra_roots=allow_roots)
    except ConfinementSettingError as exc:
        raise CliError(str(exc), code=EXIT_BAD_INPUT) from None
    keys = DaemonKeyStore(settings.home / "daemons" / name, name)
    try:
        enrolment = keys.start(enroll_token)
    except NotEnrolledError as exc:
        raise CliError(str(exc), code=EXIT_BAD_INPUT) from None
    create_data_folder(settings.home, name)
    app = make_celery(settings, name=f"daemon-{name}", daemon=name)
    guard = guard_of(app)
    guard.signer = Signer(lambda: enrolment.identity, by=daemon_sender(name), window_s=settings.replay_window)
    guard.authenticator = DaemonAuthenticator(
        queue=daemon_queue(name), trusted=keys.trusted, window_s=settings.replay_window
    )
    # before the worker consumes: what is held then was held by an earlier process
    orphaned = orphaned_jobs(app, daemon_queue(name))
    daemon = DaemonRuntime(
        settings,
        app,
        name=name,
        labels=labels,
        orphaned_task_ids=orphaned,
        enroll_request=enrolment.request,
        confinement=confinement,
    )
    register_daemon_tasks(app, daemon, keys)
    app.steps["worker"].add(lifecycle_step(daemon))
    argv = worker_argv(
        queues=(daemon_queue(name),),
        hostname=daemon_hostname(name),
        pool=pool,
        concurrency=concurrency,
        loglevel=loglevel,
    )
    start_worker(
        app, argv, what=f"daemon {name}", finish=lambda restarting: daemon.finish(wait_for_jobs=restarting)
    )
