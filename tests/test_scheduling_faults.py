"""Scheduling and dispatch under faults, with real processes: two beats, a Redis outage, a killed
control-plane worker, a job that keeps killing its daemon."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from cp.db import make_engine
from cp.models import Run, RunAttempt, RunState
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for
from tests.test_up import free_port
from workers.deliveries import DeliveryLog

pytestmark = pytest.mark.integration

CONFIG = """
daemons: [{{name: edge-f}}]
connectors:
  - {{name: shop, kind: sqlite, path: {home}/shop.db}}
  - {{name: warehouse, kind: sqlite, path: {home}/warehouse.db}}
pipelines:
{pipelines}
"""

PIPELINE = """  - name: {name}
    source: {{connector: shop, table: {table}}}
    destination: {{connector: warehouse, table: {name}}}
    daemon: edge-f
{extra}
"""


def make_source(path: Path, *, rows: int = 5, table: str = "items") -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", ((i, f"item-{i}") for i in range(1, rows + 1)))


def config(stack: Stack, *pipelines: str) -> Path:
    return stack.write_config(CONFIG.format(home=stack.home, pipelines="".join(pipelines)))


def runs_of(database_url: str, pipeline: str) -> list[Run]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            return list(
                session.exec(select(Run).where(Run.pipeline == pipeline).order_by(col(Run.scheduled_for)))
            )
    finally:
        engine.dispose()


def attempts_of(database_url: str) -> list[RunAttempt]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            return list(session.exec(select(RunAttempt)))
    finally:
        engine.dispose()


def run_by_key(database_url: str, run_key: str) -> Run | None:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            return session.exec(select(Run).where(Run.run_key == run_key)).first()
    finally:
        engine.dispose()


def start_daemon(stack: Stack, name: str = "edge-f") -> subprocess.Popen[bytes]:
    proc = stack.start("daemon", "daemon", "--name", name)
    stack.wait_heard_from(name)  # undeclared until the test applies its configuration
    return proc


def test_two_beats_dispatch_each_fire_of_a_per_second_schedule_exactly_once(
    make_stack, make_database_url
) -> None:  # type: ignore[no-untyped-def]
    database_url = make_database_url("postgres")
    stack: Stack = make_stack(database_url)
    make_source(stack.home / "shop.db")
    stack.start("worker", "worker")
    start_daemon(stack)
    every_second = PIPELINE.format(
        name="ticker",
        table="items",
        extra="    schedule: '* * * * * *'\n    overlap: allow\n    max_active_runs: 10",
    )
    stack.cli("apply", "-f", str(config(stack, every_second)), check=True)
    stack.wait_online("edge-f")
    stack.start("beat-a", "beat")
    stack.start("beat-b", "beat")

    def enough_fires() -> list[Run]:
        done = [r for r in runs_of(database_url, "ticker") if r.state is RunState.SUCCEEDED]
        return done if len(done) >= 6 else []

    wait_for(enough_fires, timeout=90, what="six fires of the per-second schedule", stack=stack)
    stack.stop("beat-a")
    stack.stop("beat-b")
    time.sleep(2)  # let the last jobs report

    runs = [r for r in runs_of(database_url, "ticker") if r.state is not RunState.QUEUED]
    assert len(runs) >= 6
    fires = [r.scheduled_for for r in runs]
    assert len(fires) == len(set(fires))  # one run per fire time
    assert all(r.deliveries == 1 for r in runs if r.state is RunState.SUCCEEDED), [
        (r.run_key, r.deliveries) for r in runs
    ]
    per_run = Counter(a.run_key for a in attempts_of(database_url))
    assert set(per_run.values()) == {1}  # each fire was queued (dispatched) once, by one of the beats


class PrivateRedis:
    """A redis-server of the test's own, so stopping it disturbs nobody else."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.directory / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (
                subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).returncode
                == 0
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)  # an outage, not a clean shutdown
            self.proc.wait()
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(free_port(), tmp_path)
    redis.start()
    yield redis
    redis.stop()


def test_after_a_redis_outage_fires_follow_the_catch_up_policy_and_every_worker_consumes_again(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
    private_redis: PrivateRedis,
) -> None:
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url)
    stack.env["MYCELIAL_BROKER_URL"] = private_redis.url
    make_source(stack.home / "shop.db")
    stack.start("worker", "worker")
    start_daemon(stack)
    every_second = PIPELINE.format(name="ticker", table="items", extra="    schedule: '* * * * * *'")
    manual = PIPELINE.format(name="manual", table="items", extra="")
    stack.cli("apply", "-f", str(config(stack, every_second, manual)), check=True)
    stack.wait_online("edge-f")
    stack.start("beat", "beat")
    wait_for(
        lambda: any(r.state is RunState.SUCCEEDED for r in runs_of(database_url, "ticker")),
        timeout=60, what="a scheduled run before the outage", stack=stack,
    )  # fmt: skip

    private_redis.stop()
    outage_start = time.time()
    time.sleep(10)
    private_redis.start()
    outage_end = time.time()

    def runs_after_recovery() -> list[Run]:
        done = [
            r for r in runs_of(database_url, "ticker")
            if r.state is RunState.SUCCEEDED
            and r.scheduled_for
            and r.scheduled_for.timestamp() > outage_end + 1
        ]  # fmt: skip
        return done if len(done) >= 3 else []

    wait_for(runs_after_recovery, timeout=90, what="scheduled runs after the outage", stack=stack)
    runs = runs_of(database_url, "ticker")
    assert len({r.scheduled_for for r in runs}) == len(runs)
    assert all(r.deliveries <= 1 for r in runs), [(r.run_key, r.deliveries) for r in runs]
    during = [r for r in runs if r.scheduled_for and outage_start < r.scheduled_for.timestamp() < outage_end]
    # overlap skip: the first fire in the outage waits for the broker, the others are skipped
    assert sum(1 for r in during if r.state is not RunState.SKIPPED) <= 2, [
        (r.run_key, r.state) for r in during
    ]

    # every worker consumes again: the control plane records heartbeats, the daemon runs a job
    ran = stack.cli("run", "manual", "--wait", "--timeout", "60")
    assert ran.returncode == 0, ran.stderr + stack.logs()
    beat_before = stack.daemon("edge-f")["last_heartbeat_at"]  # type: ignore[index]
    wait_for(
        lambda: stack.daemon("edge-f")["last_heartbeat_at"] != beat_before, timeout=10, what="a new heartbeat"
    )  # type: ignore[index]


def test_a_killed_control_plane_worker_loses_no_run_event(make_stack, make_database_url) -> None:  # type: ignore[no-untyped-def]
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url, cp_visibility_timeout="4", cp_unacked_restore_interval="1")
    for n in range(3):
        make_source(stack.home / "shop.db", table=f"items{n}", rows=50)
    worker = stack.start("worker", "worker")
    start_daemon(stack)
    # three manual runs of each pipeline at once: allowed, or two would wait for beat, absent here
    allow = "    overlap: allow\n    max_active_runs: 3"
    pipelines = [PIPELINE.format(name=f"p{n}", table=f"items{n}", extra=allow) for n in range(3)]
    stack.cli("apply", "-f", str(config(stack, *pipelines)), check=True)
    stack.wait_online("edge-f")

    started = [
        subprocess.Popen(stack.cli_argv("run", f"p{n % 3}"), env=stack.env, stdout=subprocess.DEVNULL)
        for n in range(9)
    ]
    time.sleep(1.5)
    worker.send_signal(signal.SIGKILL)  # in the middle of recording run events
    worker.wait()
    for proc in started:
        proc.wait(timeout=60)
    stack.procs.pop("worker")
    time.sleep(2)
    stack.start("worker", "worker")

    def all_finished() -> list[Run]:
        runs = [r for n in range(3) for r in runs_of(database_url, f"p{n}")]
        return runs if len(runs) == 9 and all(r.state.finished for r in runs) else []

    runs = wait_for(all_finished, timeout=90, what="every run to be recorded as finished", stack=stack)
    assert {r.state for r in runs} == {RunState.SUCCEEDED}
    assert all(r.rows_written == 50 for r in runs)


def test_a_job_that_keeps_killing_its_daemon_is_stopped_by_its_attempts_and_by_the_delivery_limit(
    make_stack, make_database_url
) -> None:  # type: ignore[no-untyped-def]
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(
        database_url, visibility_timeout="3", unacked_restore_interval="1", max_deliveries="2"
    )
    make_source(stack.home / "shop.db", rows=100_000)
    stack.start("worker", "worker")
    daemon = start_daemon(stack)
    slow = PIPELINE.format(
        name="poison", table="items", extra="    batch_size: 20\n    retries: {max_attempts: 1}"
    )
    stack.cli("apply", "-f", str(config(stack, slow)), check=True)
    stack.wait_online("edge-f")

    # the job "kills" its daemon, which restarts at once: its hello ends the run's only attempt
    first = json.loads(stack.cli("run", "poison", "--json", check=True).stdout)["run_key"]
    wait_for(
        lambda: (run := run_by_key(database_url, first)) and run.state is RunState.RUNNING,
        timeout=60, what="the poison run to start", stack=stack,
    )  # fmt: skip
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    stack.procs.pop("daemon")
    daemon = start_daemon(stack)
    lost = wait_for(
        lambda: (run := run_by_key(database_url, first)) and run.state.finished and run,
        timeout=60, what="the poison run to end", stack=stack,
    )  # fmt: skip
    assert (lost.state, lost.attempt) == (RunState.LOST, 1)
    assert lost.error == "lost: daemon edge-f restarted while the run was going"

    # a job whose message came back more often than the limit (its daemon died each time before
    # the control plane heard the job start) is given up by the daemon instead of run again
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    stack.procs.pop("daemon")
    second = json.loads(stack.cli("run", "poison", "--json", check=True).stdout)["run_key"]
    deliveries = DeliveryLog(stack.home / "daemons" / "edge-f" / "deliveries")
    for _ in range(2):
        deliveries.record(second)
    start_daemon(stack)
    given_up = wait_for(
        lambda: (run := run_by_key(database_url, second)) and run.state.finished and run,
        timeout=60, what="the second poison run to end", stack=stack,
    )  # fmt: skip
    assert given_up.state is RunState.FAILED
    assert "delivered 3 times without finishing" in (given_up.error or "")


TAKE_AND_DIE = """
import os, sys
from kombu import Connection, Queue
from cp.celery_app import unacked_options
from cp.protocol import daemon_queue
from cp.settings import Settings
options = unacked_options(Settings(), daemon=sys.argv[2])  # held as that daemon's consumer holds it
with Connection(sys.argv[1], transport_options=options) as conn:
    name = daemon_queue(sys.argv[2])
    message = Queue(name, exchange=name, routing_key=name)(conn.default_channel).get(no_ack=False)
    assert message is not None, "no job in the queue"
    os._exit(0)  # as if killed: no acknowledgement, nothing given back at shutdown
"""


def test_a_job_an_earlier_daemon_process_took_is_retried_as_soon_as_the_daemon_starts_again(
    make_stack, make_database_url
) -> None:  # type: ignore[no-untyped-def]
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url)
    make_source(stack.home / "shop.db")
    stack.start("worker", "worker")
    daemon = start_daemon(stack)
    held = PIPELINE.format(name="held", table="items", extra="")
    stack.cli("apply", "-f", str(config(stack, held)), check=True)
    stack.wait_online("edge-f")
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    stack.procs.pop("daemon")
    # edge-f still looks online (no beat: no health checks), so the run is queued on it
    key = json.loads(stack.cli("run", "held", "--json", check=True).stdout)["run_key"]
    # an earlier process of edge-f takes the job from its queue and dies before it acknowledges it
    # or says it started: Redis holds the message as unacknowledged for the visibility timeout (6 h)
    subprocess.run(
        [sys.executable, "-c", TAKE_AND_DIE, stack.env["MYCELIAL_BROKER_URL"], "edge-f"],
        check=True,
        timeout=60,
    )

    start_daemon(stack)
    stack.start("beat", "beat")
    run = wait_for(
        lambda: (r := run_by_key(database_url, key)) and r.state.finished and r,
        timeout=60, what="the held run to be retried and finish", stack=stack,
    )  # fmt: skip
    assert (run.state, run.attempt) == (RunState.SUCCEEDED, 2), (run.state, run.attempt, run.error)
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            attempts = select(RunAttempt).where(RunAttempt.run_key == key, RunAttempt.attempt == 1)
            first = session.exec(attempts).one()
    finally:
        engine.dispose()
    assert first.error == "lost: daemon edge-f restarted while the run was going"


def test_applied_schedule_edits_change_what_fires_without_restarting_beat(
    make_stack, make_database_url
) -> None:  # type: ignore[no-untyped-def]
    database_url = make_database_url("sqlite")
    stack: Stack = make_stack(database_url)
    make_source(stack.home / "shop.db")
    stack.start("worker", "worker")
    start_daemon(stack)
    stack.start("beat", "beat")

    def apply(schedule: str, *, enabled: bool = True) -> float:
        extra = f"    schedule: '{schedule}'\n    enabled: {str(enabled).lower()}"
        stack.cli(
            "apply",
            "-f",
            str(config(stack, PIPELINE.format(name="edit", table="items", extra=extra))),
            check=True,
        )
        return time.time()

    def fires_after(moment: float, count: int) -> list[Run]:
        runs = [
            r
            for r in runs_of(database_url, "edit")
            if r.scheduled_for and r.scheduled_for.timestamp() > moment
        ]
        return runs if len(runs) >= count else []

    every_two = apply("* * * * * */2")
    wait_for(lambda: fires_after(every_two, 2), timeout=60, what="fires every 2 s", stack=stack)
    every_five = apply("* * * * * */5")
    after_edit = wait_for(
        lambda: fires_after(every_five + 1, 2), timeout=60, what="fires every 5 s", stack=stack
    )
    assert all(r.scheduled_for.second % 5 == 0 for r in after_edit if r.scheduled_for)  # type: ignore[union-attr]

    disabled = apply("* * * * * */5", enabled=False)
    time.sleep(7)
    assert fires_after(disabled + 1, 1) == []
