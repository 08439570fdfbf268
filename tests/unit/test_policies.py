"""Scheduling policies, one tick at a time: catch-up, overlap, retries, timeouts, the reconciler."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, col, select

from cp.dispatch import Outgoing
from cp.models import Pipeline, Run, RunAttempt, RunState, RunTrigger
from cp.protocol import RunEvent
from cp.retry import retry_delay
from cp.runs import create_run, mark_published, queue_run, record_run_event
from cp.scheduler import TickResult, TickSettings, tick

SINCE = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)
Tick = Callable[[datetime], TickResult]


@pytest.fixture
def step(session: Session) -> Tick:
    def step(now: datetime) -> TickResult:
        result = tick(session, now=now, settings=TickSettings(expires=60), rng=random.Random(7))
        session.commit()
        mark_published(session, [str(m.payload["run_key"]) for m in result.messages], now=now)
        session.commit()
        return result

    return step


def runs(session: Session) -> list[Run]:
    session.expire_all()
    return list(session.exec(select(Run).order_by(col(Run.scheduled_for), col(Run.id))))


def report(
    session: Session, run_key: str, state: str, *, at: datetime, attempt: int | None = None, **kw: object
) -> bool:
    event = RunEvent(run_key=run_key, daemon="edge-1", state=state, at=at, attempt=attempt, **kw)  # type: ignore[arg-type]
    handled = record_run_event(session, event, now=at, rng=random.Random(1))
    session.commit()
    return handled


def keys(messages: list[Outgoing]) -> list[str]:
    return [str(m.task_id) for m in messages]


def at(minute: int, second: int = 0, hour: int = 11) -> datetime:
    return datetime(2025, 6, 2, hour, minute, second, tzinfo=UTC)


def test_catch_up_all_runs_every_missed_fire_up_to_max_catchup_oldest_first(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="*/10 * * * *", schedule_since=SINCE, catchup="all",
                 max_catchup=3, overlap="allow", max_active_runs=10)  # fmt: skip
    result = step(at(55))  # missed 10:10 .. 11:50: the newest three run
    assert keys(result.messages) == [
        "orders@2025-06-02T11:30:00Z",
        "orders@2025-06-02T11:40:00Z",
        "orders@2025-06-02T11:50:00Z",
    ]


def test_overlap_skip_records_a_fire_as_skipped_while_a_run_is_active(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="*/10 * * * *", schedule_since=at(5))
    assert keys(step(at(10)).messages) == ["orders@2025-06-02T11:10:00Z"]
    report(session, "orders@2025-06-02T11:10:00Z", "started", at=at(10, 1))
    assert step(at(20)).messages == []
    skipped = runs(session)[1]
    assert (skipped.run_key, skipped.state) == ("orders@2025-06-02T11:20:00Z", RunState.SKIPPED)
    assert skipped.error == "skipped: the previous run is still active (overlap: skip)"


def test_overlap_queue_holds_a_fire_until_the_active_run_finishes(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="*/10 * * * *", schedule_since=at(5), overlap="queue")
    step(at(10))
    report(session, "orders@2025-06-02T11:10:00Z", "started", at=at(10, 1))
    assert step(at(20)).messages == []
    assert [r.state for r in runs(session)] == [RunState.RUNNING, RunState.SCHEDULED]
    assert runs(session)[1].error == "waiting: the pipeline's previous run is still active (overlap: queue)"
    report(session, "orders@2025-06-02T11:10:00Z", "succeeded", at=at(21))
    assert keys(step(at(21, 1)).messages) == ["orders@2025-06-02T11:20:00Z"]
    assert runs(session)[1].error is None


def test_a_manual_run_held_back_by_an_active_run_is_queued_by_beat_once_it_ends(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    pipeline = add_pipeline("orders", daemon="edge-1", schedule=None)
    first, second = (create_run(session, pipeline, trigger=RunTrigger.MANUAL, now=at(1)) for _ in range(2))
    assert first is not None and second is not None
    assert queue_run(session, first, pipeline, now=at(1), expires=60) is not None
    assert queue_run(session, second, pipeline, now=at(1), expires=60) is None
    session.commit()
    report(session, first.run_key, "started", at=at(1, 1))

    assert step(at(2)).messages == []
    report(session, first.run_key, "succeeded", at=at(3))
    assert keys(step(at(3, 1)).messages) == [second.run_key]


def test_overlap_allow_runs_up_to_max_active_runs_at_once(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="* * * * *", schedule_since=at(0), overlap="allow",
                 max_active_runs=2)  # fmt: skip
    for minute in (1, 2, 3):
        step(at(minute))
    assert [r.state for r in runs(session)] == [RunState.QUEUED, RunState.QUEUED, RunState.SCHEDULED]


def test_a_retryable_failure_is_retried_with_backoff_and_each_attempt_is_recorded(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE, max_attempts=2,
                 retry_backoff=30.0, retry_backoff_max=60.0)  # fmt: skip
    step(at(0))
    key = "orders@2025-06-02T11:00:00Z"
    report(session, key, "started", at=at(0, 1), attempt=1)
    report(session, key, "failed", at=at(0, 2), attempt=1, error="cannot connect", retryable=True)

    [run] = runs(session)
    assert (run.state, run.attempt) == (RunState.SCHEDULED, 2)
    assert run.next_attempt_at is not None
    delay = (run.next_attempt_at - at(0, 2)).total_seconds()
    assert 15 <= delay <= 30
    assert step(at(0, 3)).messages == []  # not before its time
    assert keys(step(run.next_attempt_at).messages) == [f"{key}#2"]

    report(session, key, "failed", at=at(5), attempt=2, error="cannot connect", retryable=True)
    [run] = runs(session)
    assert run.state is RunState.FAILED  # two attempts were allowed
    attempts = session.exec(select(RunAttempt).order_by(col(RunAttempt.attempt))).all()
    assert [(a.attempt, a.state, a.task_id) for a in attempts] == [
        (1, RunState.FAILED, key),
        (2, RunState.FAILED, f"{key}#2"),
    ]


def test_a_failure_that_cannot_be_fixed_by_waiting_is_not_retried(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE, max_attempts=5)
    step(at(0))
    report(session, "orders@2025-06-02T11:00:00Z", "failed", at=at(1), attempt=1, error="no such table")
    assert [(r.state, r.attempt) for r in runs(session)] == [(RunState.FAILED, 1)]


def test_events_of_an_earlier_attempt_do_not_move_the_current_one(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE, max_attempts=3)
    step(at(0))
    key = "orders@2025-06-02T11:00:00Z"
    report(session, key, "failed", at=at(1), attempt=1, error="down", retryable=True)
    assert report(session, key, "succeeded", at=at(2), attempt=1) is False
    assert runs(session)[0].state is RunState.SCHEDULED


def test_a_run_past_its_timeout_and_the_grace_ends_timed_out_and_its_task_is_revoked(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE, timeout=60.0,
                 max_attempts=1)  # fmt: skip
    step(at(0))
    key = "orders@2025-06-02T11:00:00Z"
    report(session, key, "started", at=at(0, 1), attempt=1)
    assert step(at(0, 59)).revoke == []
    # past the timeout the daemon stops the attempt itself; the control plane waits out the grace
    assert step(at(1, 2)).revoke == []
    assert step(at(1, 30)).revoke == []
    result = step(at(1, 31))
    assert result.revoke == [key]
    [run] = runs(session)
    assert (run.state, run.error) == (
        RunState.TIMED_OUT,
        "timed out after 60s (the daemon did not report within 30s more)",
    )


def test_the_timeout_grace_is_a_tick_setting(session: Session, add_pipeline: Callable[..., Pipeline]) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE, timeout=60.0,
                 max_attempts=1)  # fmt: skip
    settings = TickSettings(expires=60, timeout_grace=5.0)
    tick(session, now=at(0), settings=settings, rng=random.Random(0))
    session.commit()
    key = "orders@2025-06-02T11:00:00Z"
    report(session, key, "started", at=at(0, 1), attempt=1)
    assert tick(session, now=at(1, 5), settings=settings, rng=random.Random(0)).revoke == []
    assert tick(session, now=at(1, 6), settings=settings, rng=random.Random(0)).revoke == [key]


def test_a_timed_out_report_from_the_daemon_ends_the_attempt_timed_out_and_retries_it(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE, timeout=5.0,
                 max_attempts=2)  # fmt: skip
    step(at(0))
    key = "orders@2025-06-02T11:00:00Z"
    report(session, key, "started", at=at(0, 1), attempt=1)
    error = "pipeline orders: timed out after 5s (destination wh)"
    report(session, key, "timed_out", at=at(0, 6), attempt=1, error=error, retryable=True)
    [run] = runs(session)
    assert (run.state, run.attempt) == (RunState.SCHEDULED, 2)
    first = session.exec(select(RunAttempt).where(RunAttempt.attempt == 1)).one()
    assert (first.state, first.error) == (RunState.TIMED_OUT, error)
    retried = step(at(2))
    assert [m.payload["timeout_seconds"] for m in retried.messages] == [5.0]
    report(session, key, "started", at=at(2, 1), attempt=2)
    report(session, key, "timed_out", at=at(2, 6), attempt=2, error=error, retryable=True)
    [run] = runs(session)
    assert (run.state, run.error) == (RunState.TIMED_OUT, error)


def test_the_reconciler_publishes_again_a_queued_run_whose_publish_was_lost(
    session: Session, add_pipeline: Callable[..., Pipeline]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE)
    settings = TickSettings(expires=60, republish_after=5)
    first = tick(session, now=at(0), settings=settings, rng=random.Random(0))
    session.commit()  # ... and the broker was down: nothing marked published
    assert keys(first.messages) == ["orders@2025-06-02T11:00:00Z"]
    assert tick(session, now=at(0, 3), settings=settings, rng=random.Random(0)).messages == []
    again = tick(session, now=at(0, 6), settings=settings, rng=random.Random(0))
    assert keys(again.messages) == ["orders@2025-06-02T11:00:00Z"]


def test_a_paused_pipeline_does_not_fire(
    session: Session, add_pipeline: Callable[..., Pipeline], step: Tick
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE, paused=True)
    assert step(at(0)).messages == []
    assert runs(session) == []


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 5.0, 10.0), (2, 10.0, 20.0), (3, 20.0, 40.0), (10, 150.0, 300.0)],
)
def test_retry_delay_doubles_per_attempt_with_jitter_and_a_cap(attempt: int, low: float, high: float) -> None:
    rng = random.Random(3)
    delays = [retry_delay(attempt, backoff=10.0, max_backoff=300.0, rng=rng) for _ in range(200)]
    assert low <= min(delays) and max(delays) <= high
    assert max(delays) - min(delays) > (high - low) / 4  # jittered, not constant


def test_two_schedulers_never_queue_the_same_run_twice(engine, add_pipeline: Callable[..., Pipeline]) -> None:  # type: ignore[no-untyped-def]
    add_pipeline("orders", daemon="edge-1", schedule="0 * * * *", schedule_since=SINCE)
    settings = TickSettings(expires=60)
    with Session(engine) as beat_a, Session(engine) as beat_b:
        a = tick(beat_a, now=at(0), settings=settings, rng=random.Random(0))
        beat_a.commit()
        b = tick(beat_b, now=at(0) + timedelta(milliseconds=1), settings=settings, rng=random.Random(0))
        beat_b.commit()
    assert (len(a.messages), b.messages) == (1, [])


def test_a_manually_queued_job_and_a_republished_one_carry_the_pipelines_timeout(
    session: Session, add_pipeline: Callable[..., Pipeline]
) -> None:
    pipeline = add_pipeline("orders", daemon="edge-1", schedule=None, timeout=5.0)
    run = create_run(session, pipeline, trigger=RunTrigger.MANUAL, now=at(1))
    assert run is not None
    message = queue_run(session, run, pipeline, now=at(1), expires=60)
    assert message is not None and message.payload["timeout_seconds"] == 5.0
    session.commit()
    again = tick(session, now=at(1, 10), settings=TickSettings(expires=60), rng=random.Random(0))
    assert [m.payload["timeout_seconds"] for m in again.messages] == [5.0]
