"""Heartbeats: 1,000 simulated daemons against ONE control-plane worker, at 200 and 500 heartbeats/s.

Real processes with default settings: ``mycelial worker`` (threads pool, 4 threads, log level
info) and ``mycelial beat`` (health check every second, probes every 15 s), on SQLite. The
configuration declares ``sim-0000`` … ``sim-0999``; the benchmark writes their heartbeats the
way a daemon does (each overwrites its heartbeat key, workers/heartbeat_key.py, signed with a key
registered for it as enrolment would, docs/security.md) at a steady rate
(each daemon beats every 1000/rate seconds) for 60 s per rate (``--quick``: 15 s) and reports,
per rate:

- ``worker CPU``: the worker's CPU time over the phase (all its threads and children, from
  /proc), as a fraction of one core; target under 1/3 at 200/s;
- ``heartbeat lag p50 / p99``: from a heartbeat's ``sent_at`` to the moment its values are seen
  in SQL, sampled on 50 daemons every 0.1 s; target p99 under 2 s. The simulated daemons report
  their send time as ``memory_mb``, so the benchmark knows exactly which heartbeat a row holds;
- ``mycelial.cp length max / final``: sampled every 0.5 s; bounded means it ends near zero
  (baseline: one second of heartbeats);
- ``health checks``: ``cp.check_daemon_health`` runs that did their work during the phase
  (counted in the worker's log; a run skipped because the previous one was still going does not
  count) against those beat sent (counted in beat's log), and those against the schedule's
  number; target all.

Before the first rate, every simulated daemon says hello reporting the configuration it was
pushed as applied, as a real daemon would. The simulated daemons answer no probes, so they turn
``degraded`` once, early in the first phase: one status change per daemon.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
from sqlmodel import Session, col, select

from bench.harness import Result, broker, progress
from bench.raw_messages import RawTaskMessages
from cp.celery_app import make_celery
from cp.db import make_engine
from cp.embedded_redis import redis_client
from cp.models import Daemon, DaemonKey, utcnow
from cp.protocol import (
    CP_DAEMON_HELLO,
    CP_HEARTBEAT,
    CP_QUEUE,
    HEARTBEAT_KEY_TTL_SECONDS,
    HEARTBEAT_TASK_ID,
    heartbeat_key,
)
from cp.security.envelope import daemon_sender
from cp.security.keys import Identity
from cp.security.signer import Signer
from cp.settings import Settings

DAEMONS = 1_000
RATES = (200, 500)
SAMPLED = 50  # daemons whose rows are polled for lag
TICK = 0.1  # seconds between two pushes of heartbeats
HEALTH_CHECK_INTERVAL = 1.0  # the default of MYCELIAL_HEALTH_CHECK_INTERVAL
CPU_TARGET = 1 / 3
LAG_TARGET_S = 2.0
_STAMP = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: INFO/\w+\] "
HEALTH_RAN = re.compile(_STAMP + r"Task cp\.check_daemon_health\[[^]]+\] succeeded")
HEALTH_SKIPPED = re.compile(_STAMP + r"cp\.check_daemon_health skipped")
HEALTH_SENT = re.compile(_STAMP + r"Scheduler: Sending due task check-daemon-health")


def daemon_name(i: int) -> str:
    return f"sim-{i:04d}"


def config_text() -> str:
    lines = ["daemons:"] + [
        f"  - {{name: {daemon_name(i)}, labels: {{site: bench}}}}" for i in range(DAEMONS)
    ]
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its descendants, from /proc (utime + stime of every thread)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        proc_pid, ppid = int(stat.parent.name), int(fields[1])
        if proc_pid == pid or _descends(ppid, pid):
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _descends(ppid: int, ancestor: int) -> bool:
    while ppid > 1:
        if ppid == ancestor:
            return True
        try:
            ppid = int(Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def lines_between(log: Path, pattern: re.Pattern[str], start: datetime, end: datetime) -> int:
    """Log lines matching ``pattern`` stamped within [start, end) (local time, as Celery logs)."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        match = pattern.match(line)
        if match:
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007  (local, as logged)
            count += start <= at < end
    return count


@dataclass
class Phase:
    rate: int
    seconds: float
    lags: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    final_length: int = 0
    cpu: float = 0.0
    health_checks: int = 0  # that ran to the end (not skipped because the previous one still ran)
    sent_checks: int = 0  # that beat sent
    expected_checks: int = 0  # by the schedule


class Sampler(threading.Thread):
    """Polls the sampled daemons' rows and the queue length while a phase runs."""

    def __init__(self, engine_url: str, client: redis.Redis, phase: Phase) -> None:
        super().__init__(daemon=True)
        self.engine = make_engine(engine_url)
        self.client = client
        self.phase = phase
        self.stop = threading.Event()
        self.seen: dict[str, float | None] = {}

    def run(self) -> None:
        names = [daemon_name(i) for i in range(0, DAEMONS, DAEMONS // SAMPLED)]
        last_length_at = 0.0
        while not self.stop.wait(TICK):
            with Session(self.engine) as session:
                rows = session.exec(select(Daemon.name, Daemon.memory_mb).where(col(Daemon.name).in_(names)))
                now = time.time()
                for name, sent in rows:
                    if sent is not None and sent != self.seen.get(name) and name in self.seen:
                        self.phase.lags.append(now - sent)
                    self.seen[name] = sent
            if now - last_length_at >= 0.5:
                self.phase.lengths.append(int(self.client.llen(CP_QUEUE)))
                last_length_at = now
        self.engine.dispose()


def enrol(engine_url: str) -> dict[str, Signer]:
    """A key per simulated daemon, registered as enrolment would; each signs its heartbeats."""
    signers = {}
    engine = make_engine(engine_url)
    with Session(engine) as session:
        for i in range(DAEMONS):
            name, identity = daemon_name(i), Identity.generate()
            session.add(
                DaemonKey(
                    name=name, key_id=identity.key_id, public_key=identity.public_text, enrolled_at=utcnow()
                )
            )
            signers[name] = Signer(lambda key=identity: key, by=daemon_sender(name), window_s=300)
        session.commit()
    engine.dispose()
    return signers


def publish(client: redis.Redis, signers: dict[str, Signer], *, rate: int, seconds: float) -> None:
    """``rate`` heartbeats a second for ``seconds``, spread over the daemons in turn."""
    started = time.monotonic()
    sent, turn, tick = 0, 0, 0
    while tick * TICK < seconds:
        tick += 1
        due = round(rate * TICK * tick)
        pipe = client.pipeline(transaction=False)
        for _ in range(due - sent):
            now = datetime.now(UTC)
            name = daemon_name(turn % DAEMONS)
            payload = {
                "v": 1,
                "name": name,
                "sent_at": now.isoformat(),
                "cpu_percent": 1.0,
                "memory_mb": now.timestamp(),
            }
            key = heartbeat_key(name)
            auth = signers[name].header(
                task=CP_HEARTBEAT, task_id=HEARTBEAT_TASK_ID, queue=key, payload=payload
            )
            pipe.set(key, json.dumps({"auth": auth, "beat": payload}), ex=HEARTBEAT_KEY_TTL_SECONDS)
            turn += 1
        pipe.execute()
        sent = due
        time.sleep(max(0.0, started + tick * TICK - time.monotonic()))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_phases(url: str, *, seconds: float) -> list[Phase]:
    with tempfile.TemporaryDirectory(prefix="mychb") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
        env.update(MYCELIAL_HOME=home, MYCELIAL_BROKER_URL=url, PYTHONUNBUFFERED="1")
        cli = [sys.executable, "-m", "cp.cli"]
        engine_url = f"sqlite:///{home}/mycelial.db"
        client = redis_client(url)
        client.delete(CP_QUEUE, *(heartbeat_key(daemon_name(i)) for i in range(DAEMONS)))
        config = Path(home) / "daemons.yaml"
        config.write_text(config_text())
        subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)
        signers = enrol(engine_url)
        # the pushes of the apply wait in queues no simulated daemon consumes: not part of the load
        for i in range(DAEMONS):
            client.delete(f"mycelial.daemon.{daemon_name(i)}")
        worker_log, beat_log = Path(home) / "worker.log", Path(home) / "beat.log"
        with worker_log.open("wb") as wlog, beat_log.open("wb") as blog:
            worker = subprocess.Popen([*cli, "worker"], env=env, stdout=wlog, stderr=subprocess.STDOUT)
            beat = subprocess.Popen([*cli, "beat"], env=env, stdout=blog, stderr=subprocess.STDOUT)
            try:
                app = make_celery(Settings(home=Path(home)), url=url)
                progress("warming up: every daemon says hello, with the config it was pushed applied")
                hellos = RawTaskMessages(app, client, task=CP_DAEMON_HELLO, queue=CP_QUEUE)
                hellos.push([hellos.build(hello(i)) for i in range(DAEMONS)])
                _wait_drained(client, timeout=300)
                _wait_heard_from(engine_url, timeout=120)
                time.sleep(3)
                phases = []
                for rate in RATES:
                    phase = Phase(rate=rate, seconds=seconds)
                    sampler = Sampler(engine_url, client, phase)
                    cpu_before = cpu_seconds(worker.pid)
                    start = datetime.now()  # noqa: DTZ005  (compared with the worker's local log times)
                    sampler.start()
                    publish(client, signers, rate=rate, seconds=seconds)
                    end = datetime.now()  # noqa: DTZ005
                    phase.cpu = (cpu_seconds(worker.pid) - cpu_before) / seconds
                    phase.final_length = int(client.llen(CP_QUEUE))
                    time.sleep(1.5)  # the last samples, and health checks already taken but still running
                    sampler.stop.set()
                    sampler.join()
                    ran = lines_between(worker_log, HEALTH_RAN, start, end)
                    phase.health_checks = ran - lines_between(worker_log, HEALTH_SKIPPED, start, end)
                    phase.sent_checks = lines_between(beat_log, HEALTH_SENT, start, end)
                    phase.expected_checks = int(seconds / HEALTH_CHECK_INTERVAL)
                    phases.append(phase)
                    progress(
                        f"{rate}/s: cpu {phase.cpu:.2f} cores, lag p50 {percentile(phase.lags, 50):.2f}s "
                        f"p99 {percentile(phase.lags, 99):.2f}s ({len(phase.lags)} samples), "
                        f"queue max {max(phase.lengths, default=0)} final {phase.final_length}, "
                        f"health checks {phase.health_checks} ran, {phase.sent_checks} sent by beat, "
                        f"{phase.expected_checks} expected"
                    )
                    _wait_drained(client, timeout=60)
                return phases
            finally:
                for proc in (worker, beat):
                    proc.terminate()
                for proc in (worker, beat):
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()


def hello(i: int) -> dict[str, object]:
    return {"v": 1, "name": daemon_name(i), "software_version": "bench", "applied_config_version": 1}


def _wait_heard_from(engine_url: str, *, timeout: float) -> None:
    engine = make_engine(engine_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with Session(engine) as session:
                heard = session.exec(select(Daemon.name).where(col(Daemon.last_heartbeat_at).is_not(None)))
            if len(heard.all()) == DAEMONS:
                return
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise RuntimeError("the hellos of the simulated daemons were not all recorded")


def _wait_drained(client: redis.Redis, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.llen(CP_QUEUE) and time.monotonic() < deadline:
        time.sleep(0.2)


def run(*, quick: bool) -> list[Result]:
    with broker() as url:
        phases = run_phases(url, seconds=15.0 if quick else 60.0)
    results = []
    for p in phases:
        results += [
            Result(f"{p.rate}/s: worker CPU", 100 * p.cpu, "% of one core", 100 * CPU_TARGET),
            Result(
                f"{p.rate}/s: heartbeat lag p50", 1000 * percentile(p.lags, 50), "ms", 1000 * LAG_TARGET_S
            ),
            Result(
                f"{p.rate}/s: heartbeat lag p99", 1000 * percentile(p.lags, 99), "ms", 1000 * LAG_TARGET_S
            ),
            Result(f"{p.rate}/s: mycelial.cp length max", max(p.lengths, default=0), "messages", p.rate),
            Result(f"{p.rate}/s: mycelial.cp length final", p.final_length, "messages", p.rate),
            Result(
                f"{p.rate}/s: health checks run of those beat sent", p.health_checks, "checks", p.sent_checks
            ),
            Result(f"{p.rate}/s: health checks beat sent", p.sent_checks, "checks", p.expected_checks),
        ]
    return results
