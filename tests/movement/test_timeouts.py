"""An attempt's deadline stops the movement: the engine and every SQL sink commit nothing once it
passed, server-side timeouts end lock waits at it, and the watchdog cancels whatever still runs."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cp.protocol import ConnectorSpec, PipelineSpec, RunJob
from tests.movement.harness import SINK_KINDS, load_harness
from tests.movement.harness_mysql import connect as mysql_connect
from tests.movement.test_contract import read_back
from workers.confinement.paths import PathGuard
from workers.confinement.policy import Confinement
from workers.jobs import Outcome, Report, execute
from workers.movement.deadline import NO_DEADLINE, Deadline
from workers.movement.engine import run_pipeline
from workers.movement.errors import CancelledError, MovementError, TimedOutError
from workers.movement.interface import PipelineState, ReadSpec, Sink, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import Column, LogicalType, Schema
from workers.movement.watchdog import Watchdog

SCHEMA = Schema((Column("id", LogicalType.INTEGER), Column("name", LogicalType.TEXT)))
ROWS = [(i, f"row-{i}") for i in range(1, 11)]
LOCK_SAFETY = 60.0  # seconds after which a test's lock lets go regardless, so nothing hangs forever


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO items VALUES (?, ?)", ROWS)
    conn.close()


def copy(home: Path, *, deadline: Deadline, on_progress: Callable[[int, int], None], run_key: str) -> Any:
    source = make_source("sqlite", "shop", {"path": "shop.db"}, home=home)
    sink = make_sink("sqlite", "wh", {"path": "wh.db"}, home=home)
    source.deadline = sink.deadline = deadline
    with source, sink:
        return run_pipeline(
            pipeline="items",
            run_key=run_key,
            source=source,
            sink=sink,
            read=ReadSpec(table="items", query=None, batch_size=2),
            write=WriteSpec(table="items", mode="append"),
            on_progress=on_progress,
            should_stop=lambda: False,
            deadline=deadline,
        )


def test_the_engine_commits_no_batch_once_the_deadline_passed_and_the_next_attempt_resumes_exactly(
    tmp_path: Path,
) -> None:
    write_source(tmp_path / "shop.db")
    clock = Clock()
    deadline = Deadline.starting_now(3.0, clock=clock)

    def one_second_per_batch(read: int, written: int) -> None:
        clock.now += 1.0

    with pytest.raises(TimedOutError, match=r"^timed out after 3s \(before writing a batch to wh\)$"):
        copy(tmp_path, deadline=deadline, on_progress=one_second_per_batch, run_key="items@1")
    assert read_back("sqlite", {"path": "wh.db"}, "items", tmp_path) == ROWS[:6]  # three batches in time

    result = copy(tmp_path, deadline=NO_DEADLINE, on_progress=lambda r, w: None, run_key="items@1")
    assert result.resumed
    assert read_back("sqlite", {"path": "wh.db"}, "items", tmp_path) == ROWS


STATE_WRITERS = {"sqlite": "_store_state", "mysql": "_store_state", "postgres": "_store_state_json"}


@pytest.mark.parametrize("kind", SINK_KINDS)
def test_a_sink_does_not_commit_a_batch_when_the_deadline_passes_while_it_writes_it(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    harness = load_harness(kind, tmp_path / "dst")
    request.addfinalizer(harness.cleanup)
    clock = Clock()
    pipeline = f"items-{uuid.uuid4().hex[:8]}"
    sink = make_sink(kind, "wh", harness.options(), home=tmp_path)
    sink.deadline = Deadline.starting_now(5.0, clock=clock)
    sink.open()
    try:
        table = sink.prepare(WriteSpec(table="items", mode="append"), SCHEMA)
        store = getattr(sink, STATE_WRITERS[kind])

        def store_then_run_late(*args: Any) -> None:
            store(*args)
            clock.now += 60.0  # the deadline passes after the rows and the state, before COMMIT

        setattr(sink, STATE_WRITERS[kind], store_then_run_late)
        state = PipelineState(pipeline=pipeline, run_key="r1", complete=False, position={"n": 2})
        with pytest.raises(TimedOutError, match="before committing a batch"):
            sink.write(table, WriteSpec(table="items", mode="append"), SCHEMA, ROWS[:2], state)
            sink.load_state(pipeline)  # a sink that commits in the background says so at its next call
    finally:
        sink.close()
    assert read_back(kind, harness.options(), "items", tmp_path) == []
    check = make_sink(kind, "wh", harness.options(), home=tmp_path)
    with check:
        assert isinstance(check, Sink) and check.load_state(pipeline) is None


def test_a_batch_the_control_plane_ended_the_attempt_during_is_rolled_back(tmp_path: Path) -> None:
    ended = False
    sink = make_sink("sqlite", "wh", {"path": "wh.db"}, home=tmp_path)
    sink.deadline = Deadline.starting_now(None, ended=lambda: ended)
    sink.open()
    try:
        table = sink.prepare(WriteSpec(table="items", mode="append"), SCHEMA)
        store = sink._store_state  # type: ignore[attr-defined]

        def store_then_revoke(state: PipelineState) -> None:
            nonlocal ended
            store(state)
            ended = True  # the control plane revokes the task while the batch is being written

        sink._store_state = store_then_revoke  # type: ignore[attr-defined]
        state = PipelineState(pipeline="items", run_key="r1", complete=False, position={"n": 2})
        with pytest.raises(CancelledError, match="before committing a batch"):
            sink.write(table, WriteSpec(table="items", mode="append"), SCHEMA, ROWS[:2], state)
    finally:
        sink.close()
    assert read_back("sqlite", {"path": "wh.db"}, "items", tmp_path) == []


@contextmanager
def locked(kind: str, harness: Any) -> Iterator[threading.Event]:
    """``items`` locked by another session (exclusively) until the block ends or LOCK_SAFETY passes;
    yields an event set when the lock went because of LOCK_SAFETY."""
    if kind == "postgres":
        conn = harness.connect()
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        statements = ["ROLLBACK"]
    else:
        conn = mysql_connect(harness.options())
        conn.cursor().execute("LOCK TABLES items WRITE")
        statements = ["UNLOCK TABLES"]
    gone = threading.Lock()
    safety = threading.Event()

    def still_open() -> bool:
        return not conn.closed if kind == "postgres" else bool(conn.open)

    def let_go() -> None:
        with gone:
            if still_open():
                for statement in statements:
                    conn.cursor().execute(statement)
                conn.close()

    def let_go_late() -> None:
        safety.set()
        let_go()

    timer = threading.Timer(LOCK_SAFETY, let_go_late)
    timer.start()
    try:
        yield safety
    finally:
        timer.cancel()
        let_go()


def sink_on_locked_table(kind: str, tmp_path: Path) -> tuple[Any, Sink, str]:
    harness = load_harness(kind, tmp_path / "dst")
    sink = make_sink(kind, "wh", harness.options(), home=tmp_path)
    sink.open()
    sink.prepare(WriteSpec(table="items", mode="append"), SCHEMA)
    return harness, sink, f"items-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_write_to_a_table_locked_by_another_session_gives_up_at_the_deadline(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    harness, sink, pipeline = sink_on_locked_table(kind, tmp_path)
    request.addfinalizer(harness.cleanup)
    state = PipelineState(pipeline=pipeline, run_key="r1", complete=False, position={"n": 2})
    with locked(kind, harness) as safety:
        sink.deadline = deadline = Deadline.starting_now(2.0)
        try:
            with pytest.raises(MovementError):
                sink.write("items", WriteSpec(table="items", mode="append"), SCHEMA, ROWS[:2], state)
                sink.load_state(pipeline)
        finally:
            sink.close()
        assert deadline.passed() and not safety.is_set()  # the server's timeout ended it, not the lock
    assert read_back(kind, harness.options(), "items", tmp_path) == []


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_the_watchdog_cancels_a_statement_that_no_server_timeout_bounds(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    harness, sink, pipeline = sink_on_locked_table(kind, tmp_path)
    request.addfinalizer(harness.cleanup)
    state = PipelineState(pipeline=pipeline, run_key="r1", complete=False, position={"n": 2})
    with locked(kind, harness) as safety:
        deadline = Deadline.starting_now(2.0)  # the sink itself sets no server timeout
        try:
            with Watchdog(deadline, [sink], name="test") as watchdog, pytest.raises(MovementError):
                sink.write("items", WriteSpec(table="items", mode="append"), SCHEMA, ROWS[:2], state)
                sink.load_state(pipeline)
        finally:
            sink.close()
        assert watchdog.fired and not safety.is_set()
    assert read_back(kind, harness.options(), "items", tmp_path) == []


def test_a_sqlite_write_waits_for_another_writer_no_longer_than_the_time_left(tmp_path: Path) -> None:
    sink = make_sink("sqlite", "wh", {"path": "wh.db"}, home=tmp_path)
    sink.open()
    table = sink.prepare(WriteSpec(table="items", mode="append"), SCHEMA)
    writer = sqlite3.connect(tmp_path / "wh.db", isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # holds the database's write lock
    safety = threading.Timer(10.0, writer.close)  # well inside the busy timeout of 30 s
    safety.start()
    state = PipelineState(pipeline="items", run_key="r1", complete=False, position={"n": 2})
    sink.deadline = Deadline.starting_now(1.0)
    try:
        with pytest.raises(MovementError, match="database is locked"):
            sink.write(table, WriteSpec(table="items", mode="append"), SCHEMA, ROWS[:2], state)
    finally:
        sink.close()
        safety.cancel()
        writer.close()
    assert read_back("sqlite", {"path": "wh.db"}, "items", tmp_path) == []


def within(root: Path) -> Confinement:
    return Confinement(paths=PathGuard((root,)))


def job(timeout: float | None, home: Path) -> RunJob:
    return RunJob(
        run_key="items@1",
        attempt=1,
        timeout_seconds=timeout,
        pipeline=PipelineSpec(
            name="items",
            source=ConnectorSpec(name="shop", kind="sqlite", options={"path": str(home / "shop.db")}),
            source_table="items",
            destination=ConnectorSpec(name="wh", kind="sqlite", options={"path": str(home / "wh.db")}),
            destination_table="items",
            mode="append",
            batch_size=2,
        ),
    )


def test_an_attempt_past_its_timeout_reports_timed_out_and_retryable(tmp_path: Path) -> None:
    write_source(tmp_path / "shop.db")
    clock = Clock()
    sent: list[Outcome] = []

    def send(outcome: Outcome) -> None:
        sent.append(outcome)
        clock.now += 2.0  # each event (started, progress) takes two seconds

    report = Report(send, clock=lambda: clock.now + 10.0)  # a progress event for every batch
    outcome = execute(
        job(5.0, tmp_path),
        home=tmp_path,
        confinement=within(tmp_path),
        report=report,
        should_stop=lambda: False,
        clock=clock,
    )

    assert [o.state for o in sent][0] == "started"
    assert (outcome.state, outcome.retryable) == ("timed_out", True)
    assert outcome.error is not None
    assert outcome.error.startswith("pipeline items: timed out after 5s (before writing a batch to wh)")
    written = read_back("sqlite", {"path": "wh.db"}, "items", tmp_path)
    assert 0 < len(written) < len(ROWS) and written == ROWS[: len(written)]


def test_an_attempt_without_a_timeout_runs_to_the_end_however_long_it_takes(tmp_path: Path) -> None:
    write_source(tmp_path / "shop.db")
    clock = Clock()

    def send(outcome: Outcome) -> None:
        clock.now += 3600.0

    outcome = execute(
        job(None, tmp_path),
        home=tmp_path,
        confinement=within(tmp_path),
        report=Report(send),
        should_stop=lambda: False,
        clock=clock,
    )
    assert outcome.state == "succeeded"
    assert read_back("sqlite", {"path": "wh.db"}, "items", tmp_path) == ROWS


@pytest.mark.parametrize("kind", ["postgres", "mysql"])  # SQLite: the attempt tests above
def test_a_copy_with_time_to_spare_sets_its_timeouts_and_moves_every_row(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    harness = load_harness(kind, tmp_path / "src")
    request.addfinalizer(harness.cleanup)
    columns = list(SCHEMA.columns)
    table = harness.create_table("items", columns, ROWS, primary_key=["id"])
    deadline = Deadline.starting_now(3600.0)
    source = make_source(kind, "shop", harness.options(), home=tmp_path)
    sink = make_sink(kind, "wh", harness.options(), home=tmp_path)
    source.deadline = sink.deadline = deadline
    with source, sink:
        result = run_pipeline(
            pipeline=f"items-{uuid.uuid4().hex[:8]}",
            run_key="r1",
            source=source,
            sink=sink,
            read=ReadSpec(table=table, query=None, batch_size=3),
            write=WriteSpec(table="items_copy", mode="append"),
            on_progress=lambda r, w: None,
            should_stop=lambda: False,
            deadline=deadline,
        )
        limits = [session_limit(kind, connector) for connector in (source, sink)]
    assert result.rows_written == len(ROWS)
    assert read_back(kind, harness.options(), "items_copy", tmp_path) == ROWS
    assert all(0 < limit <= 3600.25 for limit in limits), limits


def session_limit(kind: str, connector: Any) -> float:
    """The statement timeout a connector's session is under now, in seconds (0: none)."""
    if kind == "postgres":
        sql = "SELECT setting::float FROM pg_settings WHERE name = 'statement_timeout'"  # in ms
        return float(connector.conn.execute(sql).fetchone()[0]) / 1000
    with connector.conn.cursor() as cursor:
        cursor.execute("SELECT @@max_statement_time")
        return float(cursor.fetchone()[0])
