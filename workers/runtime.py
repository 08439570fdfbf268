"""What a daemon process holds: its identity, local state, running jobs and a way to talk to the cp."""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import BaseModel

import cp
from cp.messaging.broker_client import broker_client
from cp.messaging.install import guard_of
from cp.models import utcnow
from cp.protocol import (
    CP_CONFIG_REQUEST,
    CP_DAEMON_HELLO,
    CP_ENROLL,
    CP_HEARTBEAT,
    CP_PROBE_REPLY,
    CP_QUEUE,
    CP_RUN_EVENT,
    HEARTBEAT_TASK_ID,
    DaemonEnroll,
    DaemonHello,
    Heartbeat,
    dump,
)
from cp.settings import Settings
from workers.confinement.policy import Confinement
from workers.deliveries import DeliveryLog
from workers.heartbeat_key import HeartbeatWriter
from workers.local_state import LocalState
from workers.logs.shipping import LogShipping
from workers.outbox import Envelope, Outbox
from workers.progress import RunBoard
from workers.run_rates import RunRates

log = logging.getLogger(__name__)


ENROLLED_WAIT = 15.0  # seconds the first hello waits for `daemon.enrolled` before it goes anyway


class DaemonRuntime:
    def __init__(
        self,
        settings: Settings,
        app: Celery,
        *,
        name: str,
        labels: dict[str, str],
        orphaned_task_ids: Sequence[str] = (),
        enroll_request: DaemonEnroll | None = None,
        confinement: Confinement | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = utcnow()  # before any job can start in this process
        self.orphaned_task_ids = list(orphaned_task_ids)  # see workers/orphans.py
        self.enroll_request = enroll_request  # sent before the hello (workers/identity.py)
        self.app = app
        self.name = name
        self.labels = labels
        self.home = settings.home
        # what its connectors may touch: the data folder by default, more by settings
        self.confinement = confinement or Confinement.from_settings(settings, daemon=name)
        self.state = LocalState(settings.home / "daemons" / name)
        self.deliveries = DeliveryLog(settings.home / "daemons" / name / "deliveries")
        self._running: set[str] = set()
        self.progress = RunBoard()  # what each running job has done so far
        self._finished: set[str] = set()
        self.rates = RunRates()  # each heartbeat's rows per second of the jobs on the board
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.enrolled = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._cpu_mark = (time.monotonic(), _cpu_seconds())
        self.outbox = Outbox(
            self._publish,
            max_pending=settings.outbox_max_pending,
            spool=settings.home / "daemons" / name / "outbox.jsonl",
            retry_max=settings.outbox_retry_max,
            name=f"daemon {name} outbox",
        )
        self.logs = LogShipping(settings, app, name=name, directory=settings.home / "daemons" / name / "logs")
        self.heartbeats = HeartbeatWriter(lambda: broker_client(app), sign=self._sign_heartbeat)

    def _sign_heartbeat(self, key: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        signer = guard_of(self.app).signer
        if signer is None:
            return None
        return signer.header(task=CP_HEARTBEAT, task_id=HEARTBEAT_TASK_ID, queue=key, payload=payload)

    def send(self, task: str, message: BaseModel, *, argsrepr: str) -> None:
        """Queue a message for the control plane; it goes out when the broker can take it."""
        self.outbox.put(envelope(task, dump(message), argsrepr=argsrepr))

    def _publish(self, message: Envelope) -> None:
        # no retry here: the outbox retries, so a caller never waits for the broker
        self.app.send_task(
            message.task,
            args=[message.payload],
            queue=CP_QUEUE,
            argsrepr=message.argsrepr,
            kwargsrepr="{}",
            retry=False,
        )

    # --- running-job bookkeeping: a redelivered message must not run a job twice at once

    def claim(self, run_key: str) -> bool:
        with self._lock:
            if run_key in self._running or run_key in self._finished:
                return False
            self._running.add(run_key)
            return True

    def release(self, run_key: str) -> None:
        with self._lock:
            self._running.discard(run_key)
            self._finished.add(run_key)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._running)

    # --- lifecycle

    def start(self) -> None:
        # first: what starting says is shipped too, once the control plane knows the daemon's key
        self.logs.start(send=self.enroll_request is None)
        self.confinement.announce()
        self.outbox.start()
        if self.enroll_request is not None:
            # first, through the same ordered outbox: the key every later message is signed with.
            # The hello waits for `daemon.enrolled` (workers/tasks.py): sent now, a control-plane
            # worker could handle it before another has registered the key, and refuse it. If the
            # confirmation never comes, it goes anyway after ENROLLED_WAIT.
            self.send(CP_ENROLL, self.enroll_request, argsrepr=f"daemon={self.name} enroll")
            hello_anyway = threading.Timer(ENROLLED_WAIT, self._hello_unless_enrolled)
            hello_anyway.daemon = True
            hello_anyway.start()
        else:
            self.say_hello()
        self._stop.clear()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name="mycelial-heartbeat", daemon=True
        )
        self._heartbeat_thread.start()

    def on_enrolled(self) -> None:
        """The control plane registered this daemon's key: what waited for it goes out now."""
        self.enrolled.set()
        self.logs.start_sending()
        self.say_hello()

    def _hello_unless_enrolled(self) -> None:
        if not self.enrolled.is_set() and not self._stop.is_set():
            log.warning("no enrolment confirmation within %.0fs: saying hello anyway", ENROLLED_WAIT)
            self.logs.start_sending()
            self.say_hello()

    def say_hello(self) -> None:
        applied = self.state.load()
        self.send(
            CP_DAEMON_HELLO,
            DaemonHello(
                name=self.name,
                labels=self.labels,
                software_version=cp.__version__,
                hostname=socket.gethostname(),
                applied_config_version=applied.version if applied else None,
                started_at=self.started_at,
                orphaned_task_ids=self.orphaned_task_ids,
            ),
            argsrepr=f"daemon={self.name}",
        )

    def stop(self) -> None:
        """The worker stops: no more heartbeats. Jobs may still be finishing (see ``finish``)."""
        self._stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)

    def finish(self, *, wait_for_jobs: bool, poll: float = 0.2) -> None:
        """The process is about to exit or exec: let running jobs end (they move data whether or
        not the broker is there) if asked, then send what the outbox holds or spool it."""
        if wait_for_jobs:
            announced, beat_at = False, time.monotonic()
            while running := self.running():
                if not announced:
                    log.warning("waiting for running jobs to finish first: %s", ", ".join(running))
                    announced = True
                if time.monotonic() - beat_at >= self.settings.heartbeat_interval:
                    self.heartbeat()  # the worker stopped beating; the jobs still run here
                    beat_at = time.monotonic()
                time.sleep(poll)
        self.outbox.close(timeout=self.settings.outbox_close_timeout)
        self.logs.close(timeout=self.settings.outbox_close_timeout)
        self.heartbeats.close()

    def heartbeat(self) -> None:
        now = utcnow()
        beat = Heartbeat(
            name=self.name,
            sent_at=now,
            running_runs=self.running(),
            cpu_percent=self._cpu_percent(),
            memory_mb=_rss_mb(),
            progress=self.rates.report(self.progress.snapshot(), now=now),
        )
        if not self.heartbeats.write(beat):  # a broker without keys: the cp.heartbeat task instead
            self.send(CP_HEARTBEAT, beat, argsrepr=f"daemon={self.name}")

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self.heartbeat()
            except Exception:
                log.exception("heartbeat from %s failed; trying again next interval", self.name)

    def _cpu_percent(self) -> float:
        now, cpu_now = time.monotonic(), _cpu_seconds()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu_now)
        return round(100.0 * (cpu_now - cpu_then) / max(now - then, 1e-6), 1)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def envelope(task: str, payload: dict[str, Any], *, argsrepr: str) -> Envelope:
    """How the outbox treats a message: only the newest heartbeat, probe reply and progress of a
    run matter; a run's start and end, hellos and config results must arrive."""
    if task == CP_HEARTBEAT:
        return Envelope(task, payload, argsrepr, key=CP_HEARTBEAT, droppable=True)
    if task in (CP_PROBE_REPLY, CP_CONFIG_REQUEST):
        return Envelope(task, payload, argsrepr, key=task, droppable=True)
    if task == CP_RUN_EVENT and payload.get("state") == "progress":
        return Envelope(task, payload, argsrepr, key=f"progress {payload.get('run_key')}", droppable=True)
    # a hello is not coalesced: one an earlier process spooled goes first, with that process's
    # run events, and this process's hello after them, so those runs end before it is judged
    return Envelope(task, payload, argsrepr)
