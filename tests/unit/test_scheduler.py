"""Specification of one scheduler tick: due cron fires become queued runs, each exactly once."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cp.dispatch import MemoryDispatcher, Outgoing
from cp.models import Daemon, DaemonStatus, Pipeline, Run, RunState, RunTrigger
from cp.scheduler import TickSettings, fire_due_runs
from cp.scheduler import tick as scheduler_tick

SINCE = datetime(2025, 6, 2, 10, 30, tzinfo=UTC)
EXPIRES = 300.0


@pytest.fixture
def tick(session: Session) -> Callable[[datetime], list[Outgoing]]:
    """One beat at ``now``, in outbox order: commit the runs, then publish; returns what was sent."""

    def tick(now: datetime) -> list[Outgoing]:
        dispatcher = MemoryDispatcher()
        result = scheduler_tick(
            session, now=now, settings=TickSettings(expires=EXPIRES), rng=random.Random(0)
        )
        session.commit()
        for message in result.messages:
            dispatcher.send(message)
        return dispatcher.sent

    return tick


def runs(session: Session) -> list[Run]:
    return list(session.exec(select(Run).order_by(col(Run.scheduled_for))))


def test_a_due_fire_creates_one_queued_run_and_a_job_for_the_daemon_queue(
    session: Session, add_pipeline: Callable[..., Pipeline], tick: Callable[[datetime], list[Outgoing]]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE)

    sent = tick(datetime(2025, 6, 2, 11, 0, 5, tzinfo=UTC))

    [run] = runs(session)
    assert (run.run_key, run.state, run.trigger, run.daemon) == (
        "orders@2025-06-02T11:00:00Z",
        RunState.QUEUED,
        RunTrigger.SCHEDULE,
        "edge-1",
    )
    assert run.scheduled_for == datetime(2025, 6, 2, 11, 0, tzinfo=UTC)
    [message] = sent
    assert (message.task, message.queue, message.task_id, message.expires) == (
        "daemon.run_job",
        "mycelial.daemon.edge-1",
        "orders@2025-06-02T11:00:00Z",
        EXPIRES,
    )
    assert message.payload["run_key"] == "orders@2025-06-02T11:00:00Z"
    assert message.payload["pipeline"]["name"] == "orders"


def test_firing_twice_at_the_same_moment_creates_nothing_more(
    session: Session, add_pipeline: Callable[..., Pipeline], tick: Callable[[datetime], list[Outgoing]]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule_since=SINCE)
    now = datetime(2025, 6, 2, 11, 0, tzinfo=UTC)

    first, second = tick(now), tick(now)

    assert (len(first), second) == (1, [])
    assert [r.run_key for r in runs(session)] == ["orders@2025-06-02T11:00:00Z"]


def test_two_schedulers_in_separate_sessions_create_a_fire_once(
    engine: Engine, add_pipeline: Callable[..., Pipeline]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule_since=SINCE)
    now = datetime(2025, 6, 2, 11, 0, tzinfo=UTC)

    with Session(engine) as beat_a, Session(engine) as beat_b:
        created_a = fire_due_runs(beat_a, now=now)
        beat_a.commit()
        created_b = fire_due_runs(beat_b, now=now)
        beat_b.commit()

    assert (created_a, created_b) == (1, 0)


def test_the_next_fire_creates_the_next_run(
    session: Session, add_pipeline: Callable[..., Pipeline], tick: Callable[[datetime], list[Outgoing]]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule_since=SINCE)
    tick(datetime(2025, 6, 2, 11, 0, tzinfo=UTC))

    tick(datetime(2025, 6, 2, 11, 30, tzinfo=UTC))
    tick(datetime(2025, 6, 2, 12, 0, 1, tzinfo=UTC))

    assert [r.run_key for r in runs(session)] == [
        "orders@2025-06-02T11:00:00Z",
        "orders@2025-06-02T12:00:00Z",
    ]


def test_nothing_fires_before_the_first_fire_after_the_schedule_was_applied(
    session: Session, add_pipeline: Callable[..., Pipeline], tick: Callable[[datetime], list[Outgoing]]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule_since=SINCE)

    assert tick(datetime(2025, 6, 2, 10, 59, 59, tzinfo=UTC)) == []
    assert runs(session) == []


@pytest.mark.parametrize(
    ("enabled", "schedule"),
    [pytest.param(False, "* * * * *", id="disabled"), pytest.param(True, None, id="no-schedule")],
)
def test_a_disabled_or_unscheduled_pipeline_never_fires(
    session: Session,
    add_pipeline: Callable[..., Pipeline],
    tick: Callable[[datetime], list[Outgoing]],
    enabled: bool,
    schedule: str | None,
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule=schedule, enabled=enabled, schedule_since=SINCE)

    assert tick(datetime(2025, 6, 3, 0, 0, tzinfo=UTC)) == []
    assert runs(session) == []


def test_after_downtime_only_the_newest_missed_fire_runs(
    session: Session, add_pipeline: Callable[..., Pipeline], tick: Callable[[datetime], list[Outgoing]]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule_since=SINCE)
    tick(datetime(2025, 6, 2, 11, 0, tzinfo=UTC))
    [first] = runs(session)
    first.state = RunState.SUCCEEDED
    session.add(first)
    session.commit()

    sent = tick(datetime(2025, 6, 2, 15, 20, tzinfo=UTC))

    assert [m.task_id for m in sent] == ["orders@2025-06-02T15:00:00Z"]
    assert [r.run_key for r in runs(session)] == [
        "orders@2025-06-02T11:00:00Z",
        "orders@2025-06-02T15:00:00Z",
    ]


def test_the_run_key_of_a_pipeline_in_another_zone_is_its_fire_time_in_utc(
    session: Session, add_pipeline: Callable[..., Pipeline], tick: Callable[[datetime], list[Outgoing]]
) -> None:
    add_pipeline(
        "nightly", daemon="edge-1", schedule="30 9 * * *", timezone="Europe/Berlin", schedule_since=SINCE
    )

    tick(datetime(2025, 6, 3, 8, 0, tzinfo=UTC))

    assert [r.run_key for r in runs(session)] == ["nightly@2025-06-03T07:30:00Z"]


def test_a_label_placed_run_with_no_online_daemon_waits_scheduled_without_a_message(
    session: Session,
    add_pipeline: Callable[..., Pipeline],
    add_daemon: Callable[..., Daemon],
    tick: Callable[[datetime], list[Outgoing]],
) -> None:
    add_daemon("edge-berlin", labels={"site": "berlin"}, status=DaemonStatus.OFFLINE)
    add_pipeline("stock", labels={"site": "berlin"}, schedule_since=SINCE)

    sent = tick(datetime(2025, 6, 2, 11, 0, tzinfo=UTC))

    [run] = runs(session)
    assert (sent, run.state, run.daemon) == ([], RunState.SCHEDULED, None)
    assert run.error == "waiting: no online daemon matches the pipeline's placement"


def test_each_scheduled_pipeline_fires_independently(
    session: Session, add_pipeline: Callable[..., Pipeline], tick: Callable[[datetime], list[Outgoing]]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE)
    add_pipeline("stock", daemon="edge-2", schedule="*/15 * * * *", schedule_since=SINCE)

    sent = tick(datetime(2025, 6, 2, 10, 50, tzinfo=UTC))

    assert [(m.queue, m.task_id) for m in sent] == [("mycelial.daemon.edge-2", "stock@2025-06-02T10:45:00Z")]


def test_a_scheduler_step_that_is_rolled_back_leaves_no_run_behind(
    engine: Engine, add_pipeline: Callable[..., Pipeline]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule_since=SINCE)

    with Session(engine) as beat:
        assert fire_due_runs(beat, now=datetime(2025, 6, 2, 11, 0, tzinfo=UTC)) == 1
        beat.rollback()

    with Session(engine) as check:
        assert check.exec(select(Run)).all() == []


def test_a_schedule_that_never_occurs_does_not_stop_other_pipelines_firing(
    session: Session, add_pipeline: Callable[..., Pipeline], tick: Callable[[datetime], list[Outgoing]]
) -> None:
    add_pipeline("impossible", daemon="edge-1", schedule="0 0 31 2 *", schedule_since=SINCE)
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE)

    sent = tick(datetime(2025, 6, 2, 11, 0, tzinfo=UTC))

    assert [m.task_id for m in sent] == ["orders@2025-06-02T11:00:00Z"]
