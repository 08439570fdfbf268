"""Health: how fast a SIGKILLed daemon is seen offline, and how fast its run starts elsewhere.

Real processes with **default settings** (heartbeat every 5 s, offline after three missed, health
check every second, beat polling every 0.5 s): a control-plane worker, beat and two daemons with
the same labels. A slow run starts on one daemon; the benchmark SIGKILLs that daemon and measures

- ``detection``: from the SIGKILL to the daemon's ``offline`` record;
- ``failover``: from the ``offline`` record to the retried run starting on the other daemon.

Each is reported against its target as the baseline (15 s and 5 s; a ratio below 1 meets it).
The full run repeats the kill three times and reports the worst; ``--quick`` kills once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlmodel import Session, col, select

from bench.harness import Result, broker, progress
from cp.db import make_engine
from cp.models import DaemonEvent, Run, RunAttempt, RunState

DETECTION_TARGET_S = 15.0
FAILOVER_TARGET_S = 5.0
ROWS = 300_000

CONFIG = """daemons:
  - {{name: left, labels: {{site: bench}}}}
  - {{name: right, labels: {{site: bench}}}}
connectors:
  - {{name: src, kind: sqlite, path: {home}/src.db}}
  - {{name: dst, kind: sqlite, path: {home}/dst.db}}
pipelines:
  - name: slow
    source: {{connector: src, table: items}}
    destination: {{connector: dst, table: items}}
    labels: {{site: bench}}
    mode: append
    batch_size: 20
"""


def one_kill(url: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="mych") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
        # the pipeline's files sit in the home, beside the daemons' data folders: allow it as a root
        env.update(MYCELIAL_HOME=home, MYCELIAL_BROKER_URL=url, MYCELIAL_ALLOWED_ROOTS=home)
        cli = [sys.executable, "-m", "cp.cli"]
        with sqlite3.connect(f"{home}/src.db") as conn:
            conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
            conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, f"v{i}") for i in range(ROWS)))

        def spawn(*args: str) -> subprocess.Popen[bytes]:
            own = dict(env)
            if args[0] == "daemon":  # enrolled first, as an operator would (docs/security.md)
                enrolled = subprocess.run(
                    [*cli, "daemons", "enroll", args[2]], env=env, check=True, capture_output=True
                )
                own["MYCELIAL_ENROLL_TOKEN"] = enrolled.stdout.decode().strip()
            return subprocess.Popen(
                [*cli, *args], env=own, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

        procs = {
            "worker": spawn("worker"),
            "beat": spawn("beat"),
            "left": spawn("daemon", "--name", "left", "--labels", "site=bench"),
            "right": spawn("daemon", "--name", "right", "--labels", "site=bench"),
        }
        engine = make_engine(f"sqlite:///{home}/mycelial.db")
        try:
            config = Path(home) / "health.yaml"
            config.write_text(CONFIG.format(home=home))
            time.sleep(6)  # both daemons say hello
            subprocess.run([*cli, "apply", "-f", str(config)], env=env, check=True, capture_output=True)
            subprocess.run([*cli, "run", "slow"], env=env, check=True, capture_output=True)
            victim = wait(engine, lambda s: _running_daemon(s), timeout=60, what="the run to start")
            time.sleep(1)
            killed_at = time.time()
            procs[victim].send_signal(signal.SIGKILL)
            offline_at = wait(engine, lambda s: _offline_at(s, victim), timeout=60, what="the offline record")
            restarted_at = wait(engine, _retry_started_at, timeout=60, what="the retried run to start")
        finally:
            engine.dispose()
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                proc.wait(timeout=30)
    return offline_at - killed_at, restarted_at - offline_at


def wait(engine, probe, *, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Session(engine) as session:
            found = probe(session)
        if found:
            return found
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _running_daemon(session: Session) -> str | None:
    run = session.exec(select(Run).where(col(Run.state) == RunState.RUNNING)).first()
    return run.daemon if run else None


def _offline_at(session: Session, daemon: str) -> float | None:
    event = session.exec(
        select(DaemonEvent).where(DaemonEvent.daemon == daemon, DaemonEvent.to_status == "offline")
    ).first()
    return event.at.timestamp() if event else None


def _retry_started_at(session: Session) -> float | None:
    attempt = session.exec(
        select(RunAttempt).where(col(RunAttempt.attempt) == 2, col(RunAttempt.started_at).is_not(None))
    ).first()
    return attempt.started_at.timestamp() if attempt and attempt.started_at else None


def run(*, quick: bool) -> list[Result]:
    detections, failovers = [], []
    with broker() as url:
        for trial in range(1 if quick else 3):
            detection, failover = one_kill(url)
            progress(
                f"kill {trial + 1}: offline after {detection:.1f}s, retried run started {failover:.1f}s later"
            )
            detections.append(detection)
            failovers.append(failover)
    return [
        Result("detection: SIGKILL to offline (worst)", max(detections), "s", DETECTION_TARGET_S),
        Result("failover: offline to retried run started (worst)", max(failovers), "s", FAILOVER_TARGET_S),
    ]
