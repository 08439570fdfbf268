"""Specification of running jobs' progress in heartbeats: rows per second since the last
heartbeat, a bounded list, a heartbeat key that stays within its limit, and the control plane
keeping the newest in the daemon's row."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlmodel import Session

from cp.health import record_heartbeats
from cp.heartbeats import ReceivedHeartbeat
from cp.models import Daemon
from cp.protocol import (
    CP_HEARTBEAT,
    HEARTBEAT_MAX_BYTES,
    HEARTBEAT_TASK_ID,
    Heartbeat,
    JobProgress,
    dump,
    heartbeat_key,
)
from cp.security.envelope import daemon_sender
from cp.security.keys import Identity
from cp.security.signer import Signer
from cp.settings import MAX_ID_CHARS, MAX_NAME_CHARS, MAX_PROGRESS_RUNS, MAX_RUN_KEYS
from workers.progress import RunBoard
from workers.run_rates import RunRates, rate

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


def board_with(*runs: tuple[str, float], rows: int = 0) -> RunBoard:
    """A run board holding ``(task id, seconds since it started)`` jobs, each with ``rows``."""
    board = RunBoard()
    for task_id, started_s_ago in runs:
        board.started(
            task_id=task_id,
            run_key=f"p@{task_id}",
            pipeline="p",
            attempt=1,
            now=NOW - timedelta(seconds=started_s_ago),
        )
        board.progressed(task_id, rows_read=rows, rows_written=rows)
    return board


def test_each_heartbeat_gives_the_rows_per_second_since_the_previous_one() -> None:
    board, rates = RunBoard(), RunRates()
    board.started(task_id="t1", run_key="orders@manual-1", pipeline="orders", attempt=2, now=NOW)

    board.progressed("t1", rows_read=1_000, rows_written=1_000)
    [first] = rates.report(board.snapshot(), now=NOW + timedelta(seconds=2))
    board.progressed("t1", rows_read=1_500, rows_written=1_250)
    [second] = rates.report(board.snapshot(), now=NOW + timedelta(seconds=7))

    assert (first.run_key, first.pipeline, first.attempt) == ("orders@manual-1", "orders", 2)
    assert (first.rows_written, first.rows_per_second, first.running_s) == (1_000, 500.0, 2.0)
    assert (second.rows_read, second.rows_written, second.rows_per_second) == (1_500, 1_250, 50.0)
    assert second.running_s == 7.0


def test_a_job_that_ended_is_no_longer_reported() -> None:
    board, rates = board_with(("t1", 5), ("t2", 3), rows=10), RunRates()
    rates.report(board.snapshot(), now=NOW)
    board.ended("t1")

    assert [p.run_key for p in rates.report(board.snapshot(), now=NOW + timedelta(seconds=1))] == ["p@t2"]


def test_at_most_the_limit_of_jobs_is_reported_the_longest_running_first() -> None:
    board = board_with(("t1", 1), ("t2", 5), ("t3", 3), ("t4", 4), ("t5", 2))

    assert [p.run_key for p in RunRates(limit=3).report(board.snapshot(), now=NOW)] == [
        "p@t2",
        "p@t4",
        "p@t3",
    ]


@pytest.mark.parametrize(
    ("rows", "since_rows", "seconds", "expected"),
    [
        (100, 0, 2.0, 50.0),
        (100, 100, 5.0, 0.0),
        (10, 50, 1.0, 0.0),
        (10, 0, 0.0, 0.0),
        (10**15, 0, 1e-3, 1e12),
    ],
    ids=["moving", "stalled", "rows-went-back", "no-time", "clock-step"],
)
def test_rate(rows: int, since_rows: int, seconds: float, expected: float) -> None:
    assert rate(rows, since_rows, seconds=seconds) == expected


def test_a_heartbeat_with_more_progress_entries_than_the_limit_is_refused() -> None:
    entry = JobProgress(run_key="r", pipeline="p", attempt=1)
    with pytest.raises(ValidationError):
        Heartbeat(name="edge-1", sent_at=NOW, progress=[entry] * (MAX_PROGRESS_RUNS + 1))


def test_the_largest_valid_heartbeat_still_fits_its_key() -> None:
    """Every field at its bound, signed as a daemon signs it: within what the control plane reads."""
    longest_id = "k" * MAX_ID_CHARS
    biggest = Heartbeat(
        name="d" * MAX_NAME_CHARS,
        sent_at=NOW,
        running_runs=[longest_id] * MAX_RUN_KEYS,
        cpu_percent=1e6 - 0.1,
        memory_mb=1e12 - 0.1,
        progress=[
            JobProgress(
                run_key=longest_id,
                pipeline="p" * MAX_NAME_CHARS,
                attempt=1_000_000,
                rows_read=2**63 - 1,
                rows_written=2**63 - 1,
                rows_per_second=123456789012.3,
                running_s=123456789.1,
            )
        ]
        * MAX_PROGRESS_RUNS,
    )
    payload = dump(biggest)
    signer = Signer(Identity.generate, by=daemon_sender(biggest.name), window_s=300)
    key = heartbeat_key(biggest.name)
    auth = signer.header(task=CP_HEARTBEAT, task_id=HEARTBEAT_TASK_ID, queue=key, payload=payload)
    value = json.dumps({"auth": auth, "beat": payload}, separators=(",", ":"))

    assert len(value.encode()) <= HEARTBEAT_MAX_BYTES


def test_the_newest_heartbeats_progress_is_kept_in_the_daemons_row(
    session: Session, add_daemon: Callable[..., Daemon], get_daemon: Callable[[str], Daemon]
) -> None:
    add_daemon("edge-1")
    progress = JobProgress(run_key="orders@manual-1", pipeline="orders", attempt=1, rows_written=42)
    beat = Heartbeat(
        name="edge-1", sent_at=NOW, running_runs=["orders@manual-1"], cpu_percent=12.5, progress=[progress]
    )

    record_heartbeats(session, [ReceivedHeartbeat(beat=beat, received_at=NOW)])
    session.commit()
    session.expire_all()

    daemon = get_daemon("edge-1")
    assert daemon.running_progress == [progress.model_dump(mode="json")]
    assert (daemon.running_runs, daemon.cpu_percent) == (1, 12.5)
