"""Run events with real processes: applied in order whatever the concurrency, and never left waiting
for a visibility timeout when a control-plane worker dies holding them."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlmodel import Session, col, select

from cp.celery_app import make_celery
from cp.db import create_schema, make_engine
from cp.models import Run, RunAttempt, RunState, RunTrigger
from cp.protocol import CP_QUEUE, CP_RUN_EVENT, RunEvent, dump
from cp.settings import Settings, normalize_database_url
from tests.conftest import Stack, wait_for

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

    def sent(state: str, seq: int, *, rows: int = 0, error: str | None = None) -> RunEvent:
        at = T0 + timedelta(seconds=seq)
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
    return redis.Redis.from_url(url)


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
