"""Run events with real processes: applied in order whatever the concurrency, never left waiting for
a visibility timeout when a control-plane worker dies holding them, and the control plane's short
redelivery never reaching a daemon's job."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import redis
from sqlmodel import Session, col, select

from cp import embedded_redis
from cp.celery_app import make_celery, unacked_options
from cp.db import create_schema, make_engine
from cp.models import Run, RunAttempt, RunState, RunTrigger
from cp.protocol import CP_QUEUE, CP_RUN_EVENT, DAEMON_RUN_JOB, RunEvent, daemon_queue, dump
from cp.settings import Settings, normalize_database_url
from tests.conftest import Stack, wait_for
from workers.tasks import SEQS_PER_DELIVERY

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
FINAL_STATES = ("succeeded", "failed", "cancelled")


def add_queued_runs(database_url: str, keys: list[str]) -> None:
    engine = make_engine(normalize_database_url(database_url))
    try:
        create_schema(engine)
        with Session(engine) as session:
            for key in keys:
                session.add(
                    Run(
                        run_key=key,
                        pipeline="events",
                        trigger=RunTrigger.MANUAL,
                        daemon="edge-1",
                        state=RunState.QUEUED,
                        task_id=key,
                        created_at=T0,
                        queued_at=T0,
                    )
                )
                session.add(RunAttempt(run_key=key, attempt=1, daemon="edge-1", task_id=key, queued_at=T0))
            session.commit()
    finally:
        engine.dispose()


def load(database_url: str) -> tuple[dict[str, Run], dict[str, RunAttempt]]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            runs = {r.run_key: r for r in session.exec(select(Run).order_by(col(Run.id)))}
            attempts = {a.run_key: a for a in session.exec(select(RunAttempt))}
            return runs, attempts
    finally:
        engine.dispose()


def events_of(key: str, *, final: str, rows: int) -> list[RunEvent]:
    """What a daemon sends for one job: started, two progress reports, then its outcome."""

    def sent(state: str, n: int, *, rows: int = 0, error: str | None = None) -> RunEvent:
        at, seq = T0 + timedelta(seconds=n), SEQS_PER_DELIVERY + n  # numbered as a first delivery is
        return RunEvent.model_validate(
            {"run_key": key, "daemon": "edge-1", "attempt": 1, "state": state, "at": at, "seq": seq,
             "rows_read": rows, "rows_written": rows, "error": error}
        )  # fmt: skip

    return [
        sent("started", 1),
        sent("progress", 2, rows=5),
        sent("progress", 3, rows=9),
        sent(final, 4, rows=rows, error=None if final == "succeeded" else f"{key} {final}"),
    ]


def redis_client(url: str) -> redis.Redis:
    return embedded_redis.redis_client(url)  # type: ignore[no-any-return]


def drained(client: redis.Redis) -> bool:
    """Nothing waits in the control plane's queue and nothing is held unacknowledged."""
    held = sum(int(client.hlen(key)) for key in (b"unacked", b"unacked.cp"))
    return int(client.llen(CP_QUEUE)) == 0 and held == 0


def test_events_of_200_runs_delivered_at_once_and_out_of_order_end_every_run_in_its_last_state(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url("postgres")
    stack = make_stack(database_url)
    keys = [f"events@manual-{n:03d}" for n in range(200)]
    add_queued_runs(database_url, keys)
    rng = random.Random(9)
    finals = {key: FINAL_STATES[n % 3] for n, key in enumerate(keys)}
    messages: list[RunEvent] = []
    for n, key in enumerate(keys):
        # one run's events side by side, in a random order: threads of both workers take them at once
        batch = events_of(key, final=finals[key], rows=100 + n)
        rng.shuffle(batch)
        messages.extend(batch)
    app = make_celery(Settings(broker_url=stack.env["MYCELIAL_BROKER_URL"], home=stack.home))
    with app.producer_or_acquire() as producer:
        for message in messages:
            app.send_task(CP_RUN_EVENT, args=[dump(message)], queue=CP_QUEUE, producer=producer)

    stack.start("worker-a", "worker", "--concurrency", "8")
    stack.start("worker-b", "worker", "--concurrency", "8")
    client = redis_client(stack.env["MYCELIAL_BROKER_URL"])
    wait_for(lambda: drained(client), timeout=240, what="every event to be handled", stack=stack)

    runs, attempts = load(database_url)
    ended = {key: (str(runs[key].state), runs[key].rows_written, runs[key].finished_at) for key in keys}
    expected = {key: (finals[key], 100 + n, T0 + timedelta(seconds=4)) for n, key in enumerate(keys)}
    assert ended == expected
    assert {key: str(attempts[key].state) for key in keys} == finals


def waiting_on_a_lock(conn: psycopg.Connection[tuple[int]], database_url: str) -> bool:
    """Whether a connection of the stack (named after its schema) waits for a row lock."""
    app_name = database_url.rsplit("application_name=", 1)[1]
    waiting = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        (app_name,),
    ).fetchone()
    return bool(waiting and waiting[0])


def log_of(stack: Stack, name: str) -> str:
    path = stack.home / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_an_event_a_killed_cp_worker_held_is_recorded_within_a_minute_of_a_worker_being_back(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    database_url = make_database_url("postgres")
    stack = make_stack(database_url)  # the default redelivery of control-plane messages: 60 s
    key = "events@manual-held"
    add_queued_runs(database_url, [key])
    client = redis_client(stack.env["MYCELIAL_BROKER_URL"])
    worker = stack.start("worker", "worker", "--concurrency", "2")
    wait_for(lambda: "ready." in log_of(stack, "worker"), timeout=90, what="the worker", stack=stack)
    # the test holds the run's row lock: the worker takes the event, then waits on the lock
    with psycopg.connect(database_url) as blocker, psycopg.connect(database_url, autocommit=True) as watcher:
        blocker.execute("SELECT id FROM run WHERE run_key = %s FOR UPDATE", (key,))
        app = make_celery(Settings(broker_url=stack.env["MYCELIAL_BROKER_URL"], home=stack.home))
        succeeded = events_of(key, final="succeeded", rows=42)[-1]
        app.send_task(CP_RUN_EVENT, args=[dump(succeeded)], queue=CP_QUEUE)
        wait_for(
            lambda: client.llen(CP_QUEUE) == 0 and waiting_on_a_lock(watcher, database_url),
            timeout=60, what="the worker to hold the event", stack=stack,
        )  # fmt: skip
        time.sleep(12)  # so a worker back at once still waits for the message to come back
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        stack.procs.pop("worker")
        blocker.rollback()
    runs, _ = load(database_url)
    assert runs[key].state is RunState.QUEUED and client.llen(CP_QUEUE) == 0

    stack.start("worker", "worker", "--concurrency", "2")
    wait_for(lambda: "ready." in log_of(stack, "worker"), timeout=90, what="a worker again", stack=stack)
    wait_for(
        lambda: load(database_url)[0][key].state is RunState.SUCCEEDED,
        timeout=60, what="the held event to be recorded", stack=stack,
    )  # fmt: skip
    assert load(database_url)[0][key].rows_written == 42


HOLD_A_JOB = """
import sys, time
from kombu import Connection, Queue
from cp.celery_app import unacked_options
from cp.protocol import daemon_queue
from cp.settings import Settings
# a daemon's consumer busy with a long job: it holds the message and acknowledges nothing yet
with Connection(sys.argv[1], transport_options=unacked_options(Settings(), daemon=sys.argv[2])) as conn:
    name = daemon_queue(sys.argv[2])
    message = Queue(name, exchange=name, routing_key=name)(conn.default_channel).get(no_ack=False)
    assert message is not None, "no job in the queue"
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_control_plane_worker_with_a_short_redelivery_never_hands_out_a_daemons_running_job_again(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str]
) -> None:
    stack = make_stack(
        make_database_url("sqlite"), cp_visibility_timeout="2", cp_unacked_restore_interval="1"
    )
    url = stack.env["MYCELIAL_BROKER_URL"]
    client = redis_client(url)
    queue = daemon_queue("edge-1")
    app = make_celery(Settings(broker_url=url, home=stack.home))
    app.send_task(DAEMON_RUN_JOB, args=[{"v": 1}], queue=queue, task_id="events@manual-long")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_JOB, url, "edge-1"], env=stack.env, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"holding"
        stack.start("worker", "worker")
        wait_for(lambda: "ready." in log_of(stack, "worker"), timeout=90, what="the worker", stack=stack)
        # the worker's own messages come back after 2 s: it restores in 1 s cycles, and keeps working
        succeeded = events_of("events@manual-none", final="succeeded", rows=1)[-1]
        app.send_task(CP_RUN_EVENT, args=[dump(succeeded)], queue=CP_QUEUE)
        wait_for(lambda: "unknown run" in log_of(stack, "worker"), timeout=60, what="a cp event", stack=stack)
        time.sleep(6)  # three of the worker's redelivery timeouts, six of its restore cycles

        assert client.llen(queue) == 0, "the daemon's running job was handed out a second time"
        assert client.hlen(str(unacked_options(Settings(), daemon="edge-1")["unacked_key"])) == 1
    finally:
        holder.kill()
        holder.wait()
