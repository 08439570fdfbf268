"""The control plane's shared counters: bounded labels, batched flushes, counted only on commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
from sqlmodel import Session

from cp.metrics.commit_counts import count_commits
from cp.metrics.counters import (
    COUNTERS_KEY,
    DROPPED,
    EVENTS,
    HANDLED,
    OTHER,
    REJECTED,
    ROWS_WRITTEN,
    RUNS_FINISHED,
    SharedCounters,
    field,
    parse_counters,
)
from cp.models import DaemonEvent, Run, RunState

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


def scope(client: Any) -> Any:
    @contextmanager
    def redis() -> Iterator[Any]:
        yield client

    return redis


def test_task_names_outside_the_known_ones_count_as_other_so_a_hostile_name_adds_no_series() -> None:
    counters = SharedCounters(is_known_task=lambda name: name == "cp.heartbeat")
    assert counters.task_label("cp.heartbeat") == "cp.heartbeat"
    assert counters.task_label("cp.made-up-" + "x" * 500) == OTHER
    assert counters.task_label(None) == OTHER


def test_past_the_field_cap_increments_are_dropped_and_counted() -> None:
    counters = SharedCounters(max_keys=2)
    counters.add(HANDLED, "a")
    counters.add(HANDLED, "b")
    counters.add(HANDLED, "c", amount=5)
    counters.add(HANDLED, "a")
    assert counters.take() == {field(HANDLED, "a"): 2, field(HANDLED, "b"): 1, field(DROPPED): 5}


def test_a_flush_adds_to_the_shared_hash_across_processes_and_a_failed_one_keeps_its_counts() -> None:
    client = fakeredis.FakeRedis()
    one, two = SharedCounters(), SharedCounters()
    one.add(REJECTED, "cp.heartbeat", "security")
    two.add(REJECTED, "cp.heartbeat", "security", amount=2)
    assert one.flush(scope(client)) == 1 and two.flush(scope(client)) == 1
    assert list(parse_counters(client.hgetall(COUNTERS_KEY))) == [(REJECTED, ("cp.heartbeat", "security"), 3)]

    class Down:
        def pipeline(self, **_: Any) -> Any:
            raise ConnectionError("broker away")

    one.add(HANDLED, "cp.run_event")
    with pytest.raises(ConnectionError):
        one.flush(scope(Down()))
    assert one.take() == {field(HANDLED, "cp.run_event"): 1}


def test_label_text_cannot_forge_another_field() -> None:
    assert field(HANDLED, "a|b") == "handled|a_b"


def test_finished_runs_rows_and_events_count_when_their_transaction_commits_and_never_on_rollback(
    session: Session,
) -> None:
    counters = SharedCounters()
    count_commits(counters)
    run = Run(run_key="r1", pipeline="orders", state=RunState.RUNNING, created_at=NOW)
    session.add(run)
    session.commit()
    assert counters.take() == {}

    run.state, run.rows_written = RunState.SUCCEEDED, 40
    session.add(run)
    session.add(DaemonEvent(at=NOW, daemon="edge", kind="status"))
    session.flush()
    session.rollback()
    assert counters.take() == {}

    run = session.get(Run, run.id)
    assert run is not None
    run.state, run.rows_written = RunState.SUCCEEDED, 40
    session.add(run)
    session.add(DaemonEvent(at=NOW, daemon="edge", kind="status"))
    session.add(Run(run_key="r2", pipeline="orders", state=RunState.SKIPPED, created_at=NOW))
    session.commit()
    assert counters.take() == {
        field(RUNS_FINISHED, "orders", "succeeded"): 1,
        field(ROWS_WRITTEN, "orders"): 40,
        field(EVENTS, "status"): 1,
        field(RUNS_FINISHED, "orders", "skipped"): 1,
    }
    run.error = "a later edit of a finished run"
    session.add(run)
    session.commit()
    assert counters.take() == {}


def test_runs_a_bulk_insert_finishes_count_from_their_state_changes_on_commit(session: Session) -> None:
    from cp.run_history import change_row, insert_changes

    counters = SharedCounters()
    count_commits(counters)
    rows = [
        change_row(
            at=NOW, run_key=f"ticker@{i}", pipeline="ticker", attempt=1, to_state=state, from_state=None
        )
        for i, state in enumerate([RunState.SKIPPED, RunState.SCHEDULED, RunState.SKIPPED])
    ]
    insert_changes(session, rows)
    session.rollback()
    assert counters.take() == {}
    insert_changes(session, rows)
    session.commit()
    assert counters.take() == {field(RUNS_FINISHED, "ticker", "skipped"): 2}
