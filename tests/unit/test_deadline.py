"""The deadline arithmetic: time left from the attempt's start, the server timeouts made of it, and
the watchdog that cancels what outlasts it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.movement.connectors.mysql_connection import timeouts as mysql_timeouts
from workers.movement.connectors.postgres_connection import timeouts as postgres_timeouts
from workers.movement.deadline import NO_DEADLINE, Deadline
from workers.movement.errors import CancelledError, TimedOutError
from workers.movement.interface import ReadSpec, Source, SourceBatch
from workers.movement.types import Schema
from workers.movement.watchdog import Watchdog


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_deadline_counts_from_the_attempts_start_not_from_when_it_is_checked() -> None:
    clock = Clock(100.0)
    deadline = Deadline(5.0, start=98.0, clock=clock)
    assert deadline.left() == pytest.approx(3.0)
    assert not deadline.passed()
    clock.now = 103.0
    assert deadline.passed()


def test_starting_now_reads_the_clock_once_at_the_start() -> None:
    clock = Clock(10.0)
    deadline = Deadline.starting_now(5.0, clock=clock)
    clock.now = 14.0
    assert deadline.left() == pytest.approx(1.0)


def test_the_time_left_never_goes_below_zero() -> None:
    clock = Clock(200.0)
    assert Deadline(5.0, start=100.0, clock=clock).left() == 0.0


@pytest.mark.parametrize(
    ("left", "ms", "whole"),
    [(2.5, 2500, 3), (0.0004, 1, 1), (0.0015, 2, 1), (1.0, 1000, 1), (59.9991, 60000, 60)],
)
def test_a_statement_timeout_is_the_time_left_rounded_up_and_never_zero(
    left: float, ms: int, whole: int
) -> None:
    # zero means "no limit" to PostgreSQL, MariaDB and SQLite alike
    clock = Clock(100.0)
    deadline = Deadline(left, start=100.0, clock=clock)
    assert deadline.statement_ms("writing") == ms
    assert deadline.whole_seconds("writing") == whole
    seconds = deadline.statement_seconds("writing")
    assert seconds is not None and seconds > 0


def test_once_passed_every_statement_limit_raises_a_retryable_timeout_naming_what_was_next() -> None:
    clock = Clock(105.0)
    deadline = Deadline(5.0, start=100.0, clock=clock)
    for limit in (deadline.statement_ms, deadline.statement_seconds, deadline.whole_seconds, deadline.check):
        with pytest.raises(TimedOutError) as caught:
            limit("before committing a batch")
        assert str(caught.value) == "timed out after 5s (before committing a batch)"
        assert caught.value.retryable


def test_without_a_limit_there_is_no_timeout_and_waits_keep_their_length() -> None:
    assert NO_DEADLINE.left() is None
    assert not NO_DEADLINE.passed()
    assert NO_DEADLINE.statement_ms("x") is None
    NO_DEADLINE.check("x")
    assert NO_DEADLINE.bound(30.0) == 30.0


def test_a_wait_is_bounded_by_the_time_left_but_never_to_zero() -> None:
    clock = Clock(100.0)
    deadline = Deadline(5.0, start=97.0, clock=clock)
    assert deadline.bound(30.0) == pytest.approx(2.0)
    assert deadline.bound(0.2) == 0.2
    clock.now = 110.0
    assert 0 < deadline.bound(30.0) < 0.01


def test_postgres_lock_waits_end_at_the_deadline_and_the_statement_a_moment_after() -> None:
    deadline = Deadline(2.0, start=100.0, clock=Clock(100.0))
    assert postgres_timeouts(deadline, "x") == "SET statement_timeout = 2250; SET lock_timeout = 2000"
    assert (
        postgres_timeouts(deadline, "x", local=True)
        == "SET LOCAL statement_timeout = 2250; SET LOCAL lock_timeout = 2000"
    )
    assert postgres_timeouts(NO_DEADLINE, "x") is None


def test_mariadb_bounds_statements_table_locks_and_row_locks_and_mysql_its_selects() -> None:
    deadline = Deadline(2.5, start=100.0, clock=Clock(100.0))
    assert mysql_timeouts(deadline, "x", mariadb=True) == (
        "SET SESSION max_statement_time = 2.500, lock_wait_timeout = 3, innodb_lock_wait_timeout = 3"
    )
    assert mysql_timeouts(deadline, "x", mariadb=False) == (
        "SET SESSION max_execution_time = 2500, lock_wait_timeout = 3, innodb_lock_wait_timeout = 3"
    )
    assert mysql_timeouts(NO_DEADLINE, "x", mariadb=True) is None


def test_no_server_timeout_is_set_once_the_deadline_passed() -> None:
    passed = Deadline(2.0, start=100.0, clock=Clock(103.0))
    with pytest.raises(TimedOutError):
        postgres_timeouts(passed, "before writing a batch")
    with pytest.raises(TimedOutError):
        mysql_timeouts(passed, "before writing a batch", mariadb=True)


def test_once_the_control_plane_ended_the_attempt_nothing_more_may_commit() -> None:
    ended = False
    deadline = Deadline(None, start=0.0, clock=Clock(), ended=lambda: ended)
    deadline.check("before committing a batch")
    ended = True
    with pytest.raises(CancelledError, match=r"^cancelled between batches \(before committing a batch\)"):
        deadline.check("before committing a batch")
    with pytest.raises(CancelledError):
        deadline.statement_ms("before writing a batch")


class Blocked(Source):
    """A connector whose statement runs until it is interrupted, the way a locked table's does."""

    kind = "blocked"

    def __init__(self, *, fail_first: bool = False) -> None:
        super().__init__("blocked", {}, home=Path("."))
        self.interrupted = threading.Event()
        self.calls = 0
        self.fail_first = fail_first

    def open(self) -> None: ...

    def close(self) -> None: ...

    def schema(self, spec: ReadSpec) -> Schema:
        return Schema(())

    def batches(self, spec: ReadSpec, schema: Schema) -> Iterator[SourceBatch]:
        return iter(())

    def interrupt(self) -> None:
        self.calls += 1
        if self.fail_first and self.calls == 1:
            raise RuntimeError("the cancel request did not get through")
        self.interrupted.set()


def test_the_watchdog_interrupts_every_connector_once_the_deadline_passed() -> None:
    first, second = Blocked(), Blocked()
    with Watchdog(Deadline.starting_now(0.05), [first, second], name="t") as watchdog:
        assert first.interrupted.wait(30) and second.interrupted.wait(30)
    assert watchdog.fired


def test_the_watchdog_keeps_cancelling_after_a_cancel_that_failed() -> None:
    stubborn = Blocked(fail_first=True)
    with Watchdog(Deadline.starting_now(0.05), [stubborn], name="t"):
        assert stubborn.interrupted.wait(30)
    assert stubborn.calls >= 2


def test_the_watchdog_never_interrupts_an_attempt_that_ends_in_time_or_has_no_limit() -> None:
    in_time, unlimited = Blocked(), Blocked()
    with Watchdog(Deadline.starting_now(3600.0), [in_time], name="t") as watchdog:
        pass
    with Watchdog(NO_DEADLINE, [unlimited], name="t") as idle:
        pass
    assert (watchdog.fired, idle.fired, in_time.calls, unlimited.calls) == (False, False, 0, 0)
