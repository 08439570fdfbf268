"""Specification of run rows: creation keyed by fire time, and daemons' reports applied idempotently."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import Session, select

from cp.models import Pipeline, Run, RunAttempt, RunState, RunTrigger
from cp.protocol import RunEvent
from cp.runs import (
    UnknownPipelineError,
    create_run,
    fail_or_retry,
    get_pipeline,
    move_to_another_daemon,
    queue_run,
    record_run_event,
)

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
STARTED = datetime(2025, 6, 2, 12, 0, 3, tzinfo=UTC)
FINISHED = datetime(2025, 6, 2, 12, 1, 0, tzinfo=UTC)


def event(state: str, *, at: datetime = STARTED, run_key: str = "orders@1", **fields: Any) -> RunEvent:
    return RunEvent(run_key=run_key, daemon="edge-1", state=state, at=at, **fields)  # type: ignore[arg-type]


def reload(session: Session, run_key: str = "orders@1") -> Run:
    session.expire_all()
    return session.exec(select(Run).where(Run.run_key == run_key)).one()


def test_a_second_run_for_the_same_fire_is_not_created(
    session: Session, add_pipeline: Callable[..., Pipeline]
) -> None:
    pipeline = add_pipeline("orders", daemon="edge-1")
    fire = datetime(2025, 6, 2, 11, 0, tzinfo=UTC)

    first = create_run(session, pipeline, trigger=RunTrigger.SCHEDULE, now=NOW, scheduled_for=fire)
    second = create_run(session, pipeline, trigger=RunTrigger.SCHEDULE, now=NOW, scheduled_for=fire)
    session.commit()

    assert first is not None and second is None
    assert [r.run_key for r in session.exec(select(Run))] == ["orders@2025-06-02T11:00:00Z"]


def test_manual_runs_get_distinct_keys_and_go_to_the_pinned_daemon(
    session: Session, add_pipeline: Callable[..., Pipeline]
) -> None:
    pipeline = add_pipeline("orders", daemon="edge-1", overlap="allow", max_active_runs=2)

    made = [create_run(session, pipeline, trigger=RunTrigger.MANUAL, now=NOW) for _ in range(2)]
    messages = [queue_run(session, run, pipeline, now=NOW, expires=60) for run in made if run is not None]
    session.commit()

    keys = [run.run_key for run in made if run is not None]
    assert len(set(keys)) == 2 and all(k.startswith("orders@manual-") for k in keys)
    assert [m.queue for m in messages if m is not None] == ["mycelial.daemon.edge-1"] * 2


@pytest.mark.parametrize("overlap", ["skip", "queue"])
def test_a_manual_run_waits_while_the_pipelines_previous_run_is_active(
    session: Session, add_pipeline: Callable[..., Pipeline], overlap: str
) -> None:
    pipeline = add_pipeline("orders", daemon="edge-1", overlap=overlap)
    first, second = (create_run(session, pipeline, trigger=RunTrigger.MANUAL, now=NOW) for _ in range(2))
    assert first is not None and second is not None

    assert queue_run(session, first, pipeline, now=NOW, expires=60) is not None
    assert queue_run(session, second, pipeline, now=NOW, expires=60) is None
    session.commit()

    waiting = reload(session, second.run_key)
    assert waiting.state is RunState.SCHEDULED
    assert waiting.error == f"waiting: the pipeline's previous run is still active (overlap: {overlap})"
    assert session.exec(select(RunAttempt).where(RunAttempt.run_key == second.run_key)).first() is None


def test_a_manual_run_waits_for_room_under_max_active_runs(
    session: Session, add_pipeline: Callable[..., Pipeline]
) -> None:
    pipeline = add_pipeline("orders", daemon="edge-1", overlap="allow", max_active_runs=2)
    made = [create_run(session, pipeline, trigger=RunTrigger.MANUAL, now=NOW) for _ in range(3)]

    messages = [queue_run(session, run, pipeline, now=NOW, expires=60) for run in made if run is not None]
    session.commit()

    assert [m is not None for m in messages] == [True, True, False]
    assert made[2] is not None
    waiting = reload(session, made[2].run_key)
    assert waiting.error == "waiting: 2 run(s) of the pipeline are active (max_active_runs)"


def test_looking_up_an_unknown_pipeline_names_it(session: Session) -> None:
    with pytest.raises(UnknownPipelineError, match="unknown pipeline 'ghost'"):
        get_pipeline(session, "ghost")


def test_a_started_event_moves_a_queued_run_to_running(session: Session, add_run: Callable[..., Run]) -> None:
    add_run("orders@1")

    applied = record_run_event(session, event("started"), now=NOW)
    session.commit()

    run = reload(session)
    assert applied is True
    assert (run.state, run.started_at, run.finished_at) == (RunState.RUNNING, STARTED, None)


def test_a_progress_event_updates_counts_but_keeps_the_run_running(
    session: Session, add_run: Callable[..., Run]
) -> None:
    add_run("orders@1", state=RunState.RUNNING)

    record_run_event(session, event("progress", rows_read=500, rows_written=400, cursor="42"), now=NOW)
    session.commit()

    run = reload(session)
    assert (run.state, run.rows_read, run.rows_written, run.cursor_after) == (
        RunState.RUNNING,
        500,
        400,
        "42",
    )


def test_a_succeeded_event_finishes_the_run_with_its_counts(
    session: Session, add_run: Callable[..., Run]
) -> None:
    add_run("orders@1")
    record_run_event(session, event("started"), now=NOW)

    record_run_event(session, event("succeeded", at=FINISHED, rows_read=1000, rows_written=1000), now=NOW)
    session.commit()

    run = reload(session)
    assert (run.state, run.rows_read, run.rows_written, run.error) == (RunState.SUCCEEDED, 1000, 1000, None)
    assert (run.started_at, run.finished_at) == (STARTED, FINISHED)


def test_a_failed_event_finishes_the_run_with_its_error(
    session: Session, add_run: Callable[..., Run]
) -> None:
    add_run("orders@1", state=RunState.RUNNING)

    record_run_event(
        session,
        event("failed", at=FINISHED, rows_read=20, error="source shop: no such table: orders"),
        now=NOW,
    )
    session.commit()

    run = reload(session)
    assert (run.state, run.rows_read, run.error) == (
        RunState.FAILED,
        20,
        "source shop: no such table: orders",
    )
    assert run.finished_at == FINISHED


def test_a_finish_without_a_start_event_still_records_when_it_started(
    session: Session, add_run: Callable[..., Run]
) -> None:
    add_run("orders@1")

    record_run_event(session, event("succeeded", at=FINISHED), now=NOW)
    session.commit()

    assert reload(session).started_at == FINISHED


@pytest.mark.parametrize("late", ["started", "progress", "failed", "succeeded"])
def test_events_for_a_finished_run_are_ignored(
    session: Session, add_run: Callable[..., Run], late: str
) -> None:
    add_run("orders@1")
    record_run_event(session, event("succeeded", at=FINISHED, rows_read=10, rows_written=10), now=NOW)
    session.commit()

    applied = record_run_event(
        session, event(late, at=datetime(2025, 6, 2, 13, 0, tzinfo=UTC), rows_read=99, error="late"), now=NOW
    )
    session.commit()

    run = reload(session)
    assert applied is False
    assert (run.state, run.rows_read, run.finished_at, run.error) == (RunState.SUCCEEDED, 10, FINISHED, None)


def test_a_redelivered_started_event_does_not_move_the_start_time(
    session: Session, add_run: Callable[..., Run]
) -> None:
    add_run("orders@1")
    record_run_event(session, event("started"), now=NOW)

    record_run_event(session, event("started", at=datetime(2025, 6, 2, 12, 5, tzinfo=UTC)), now=NOW)
    session.commit()

    assert reload(session).started_at == STARTED


def test_counts_never_go_backwards_when_events_arrive_out_of_order(
    session: Session, add_run: Callable[..., Run]
) -> None:
    add_run("orders@1", state=RunState.RUNNING)
    record_run_event(session, event("progress", rows_read=800, rows_written=800), now=NOW)

    record_run_event(session, event("progress", rows_read=300, rows_written=300), now=NOW)
    session.commit()

    assert (reload(session).rows_read, reload(session).rows_written) == (800, 800)


@pytest.mark.parametrize(
    "order",
    [
        ["started", "progress", "succeeded"],
        ["succeeded", "started", "progress"],
        ["progress", "succeeded", "started"],
        ["started", "succeeded", "progress"],
    ],
)
def test_a_runs_events_delivered_in_any_order_leave_it_as_its_newest_event_says(
    session: Session, add_run: Callable[..., Run], order: list[str]
) -> None:
    add_run("orders@1")
    sent = {
        "started": event("started", attempt=1, seq=1),
        "progress": event("progress", attempt=1, seq=2, rows_read=5, rows_written=5, cursor="5"),
        "succeeded": event(
            "succeeded", at=FINISHED, attempt=1, seq=3, rows_read=9, rows_written=9, cursor="9"
        ),
    }

    for state in order:
        record_run_event(session, sent[state], now=NOW)
        session.commit()

    run = reload(session)
    assert (run.state, run.rows_written, run.cursor_after, run.finished_at) == (
        RunState.SUCCEEDED,
        9,
        "9",
        FINISHED,
    )


def test_a_late_progress_event_does_not_move_the_cursor_back(
    session: Session, add_run: Callable[..., Run]
) -> None:
    add_run("orders@1", state=RunState.RUNNING)
    record_run_event(session, event("progress", attempt=1, seq=3, cursor="300"), now=NOW)

    applied = record_run_event(session, event("progress", attempt=1, seq=2, cursor="200"), now=NOW)
    session.commit()

    assert applied is False
    assert (reload(session).cursor_after, reload(session).last_event_seq) == ("300", 3)


def test_a_redelivered_started_event_counts_no_second_delivery(
    session: Session, add_run: Callable[..., Run]
) -> None:
    add_run("orders@1")
    record_run_event(session, event("started", attempt=1, seq=1), now=NOW)

    applied = record_run_event(session, event("started", attempt=1, seq=1), now=NOW)
    session.commit()

    assert applied is False
    assert reload(session).deliveries == 1


def test_a_retried_run_takes_the_events_of_its_next_attempt_from_seq_one(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", max_attempts=2, retry_backoff=0.0)
    add_run("orders@1", state=RunState.RUNNING)
    record_run_event(session, event("progress", attempt=1, seq=7), now=NOW)
    failed = event("failed", attempt=1, seq=8, error="db away", retryable=True)
    record_run_event(session, failed, now=NOW, rng=random.Random(1))
    session.commit()
    assert (reload(session).attempt, reload(session).last_event_seq) == (2, None)
    # dispatched again (a daemon speaks only for the runs placed on it)
    retried = reload(session)
    retried.daemon = "edge-1"
    session.add(retried)
    session.commit()

    applied = record_run_event(session, event("started", attempt=2, seq=1), now=NOW)
    session.commit()

    assert applied is True
    assert (reload(session).state, reload(session).last_event_seq) == (RunState.RUNNING, 1)


def test_an_event_for_an_unknown_run_is_ignored(session: Session) -> None:
    applied = record_run_event(session, event("started", run_key="ghost@1"), now=NOW)
    session.commit()

    assert applied is False
    assert session.exec(select(Run)).all() == []


def test_a_move_to_another_daemon_is_not_a_try_against_max_attempts(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", max_attempts=2, retry_backoff=0.0)
    run = add_run("orders@1")
    session.add(
        RunAttempt(run_key="orders@1", attempt=1, daemon="edge-1", task_id="orders@1", state=RunState.QUEUED)
    )
    session.commit()
    rng = random.Random(1)

    move_to_another_daemon(session, run, reason="edge-1 went offline", at=NOW)  # attempt 2, never tried
    fail_or_retry(session, run, RunState.FAILED, error="unreachable", retryable=True, at=NOW, rng=rng)
    assert (run.state, run.attempt) == (RunState.SCHEDULED, 3)  # the first try failed: one more
    fail_or_retry(session, run, RunState.FAILED, error="unreachable", retryable=True, at=NOW, rng=rng)
    assert (run.state, run.attempt) == (RunState.FAILED, 3)  # the second try failed: no more
