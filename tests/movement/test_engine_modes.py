"""The engine's modes and guarantees, on the SQLite connector (the other connectors repeat the
connector-specific parts in their own suites)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.movement.engine import RunResult, run_pipeline
from workers.movement.errors import CancelledError, MovementError
from workers.movement.interface import Mode, ReadSpec, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import UnsupportedTypeError


@pytest.fixture
def db(tmp_path: Path) -> Callable[[str], sqlite3.Connection]:
    def connect(name: str) -> sqlite3.Connection:
        conn = sqlite3.connect(tmp_path / name, isolation_level=None)
        return conn

    return connect


def run(
    tmp_path: Path,
    mode: Mode,
    *,
    table: str = "src",
    query: str | None = None,
    cursor: str | None = None,
    keys: tuple[str, ...] = (),
    drift: str = "add",
    batch_size: int = 3,
    stop_after_batches: int | None = None,
    run_key: str | None = None,
) -> RunResult:
    source = make_source("sqlite", "shop", {"path": "src.db"}, home=tmp_path)
    sink = make_sink("sqlite", "warehouse", {"path": "dst.db"}, home=tmp_path)
    batches = iter(range(10**9))
    with source, sink:
        return run_pipeline(
            pipeline="p",
            run_key=run_key or f"r-{uuid.uuid4().hex[:8]}",  # every run has its own key
            source=source,
            sink=sink,
            read=ReadSpec(
                table=None if query else table,
                query=query,
                batch_size=batch_size,
                cursor_column=cursor,
                key_columns=keys,
            ),
            write=WriteSpec(table="dst", mode=mode, key_columns=keys, schema_drift=drift),  # type: ignore[arg-type]
            on_progress=lambda read, written: None,
            should_stop=lambda: stop_after_batches is not None and next(batches) >= stop_after_batches,
        )


def rows(conn: sqlite3.Connection, sql: str = "SELECT * FROM dst ORDER BY 1, 2") -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def test_incremental_loads_rows_that_share_the_last_cursor_value_exactly_once(tmp_path: Path, db) -> None:  # type: ignore[no-untyped-def]
    src = db("src.db")
    src.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, updated INTEGER)")
    # five rows share updated=2 and straddle the batch boundary (batch size 3)
    src.executemany("INSERT INTO src VALUES (?, ?)", [(1, 1), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2)])
    assert run(tmp_path, "incremental", cursor="updated").rows_written == 6

    # a later row with the same cursor value as the last one, and a newer one
    src.executemany("INSERT INTO src VALUES (?, ?)", [(7, 2), (8, 3)])
    second = run(tmp_path, "incremental", cursor="updated", run_key="r2")
    assert second.rows_written == 2
    assert run(tmp_path, "incremental", cursor="updated", run_key="r3").rows_written == 0
    assert rows(db("dst.db")) == [
        (i, u) for i, u in [(1, 1), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2), (7, 2), (8, 3)]
    ]


def test_incremental_with_key_columns_updates_changed_rows(tmp_path: Path, db) -> None:  # type: ignore[no-untyped-def]
    src = db("src.db")
    src.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, name TEXT, updated INTEGER)")
    src.executemany("INSERT INTO src VALUES (?, ?, ?)", [(1, "a", 1), (2, "b", 1)])
    run(tmp_path, "incremental", cursor="updated", keys=("id",))
    src.execute("UPDATE src SET name = 'B', updated = 2 WHERE id = 2")
    assert run(tmp_path, "incremental", cursor="updated", keys=("id",), run_key="r2").rows_written == 1
    assert rows(db("dst.db")) == [(1, "a", 1), (2, "B", 2)]


def test_upsert_inserts_new_keys_and_updates_existing_ones(tmp_path: Path, db) -> None:  # type: ignore[no-untyped-def]
    src = db("src.db")
    src.execute("CREATE TABLE src (id INTEGER, region TEXT, qty INTEGER, PRIMARY KEY (id, region))")
    src.executemany("INSERT INTO src VALUES (?, ?, ?)", [(1, "eu", 1), (1, "us", 2), (2, "eu", 3)])
    run(tmp_path, "upsert", keys=("id", "region"))
    src.execute("UPDATE src SET qty = 10 WHERE id = 1 AND region = 'us'")
    src.execute("INSERT INTO src VALUES (3, 'eu', 4)")
    run(tmp_path, "upsert", keys=("id", "region"), run_key="r2")
    assert rows(db("dst.db")) == [(1, "eu", 1), (1, "us", 10), (2, "eu", 3), (3, "eu", 4)]


def test_a_killed_append_run_is_resumed_by_the_next_run_from_the_committed_position(
    tmp_path: Path, db
) -> None:  # type: ignore[no-untyped-def]
    src = db("src.db")
    src.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, v TEXT)")
    src.executemany("INSERT INTO src VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 11)])
    with pytest.raises(CancelledError):
        run(tmp_path, "append", stop_after_batches=2)
    assert len(rows(db("dst.db"))) == 6
    resumed = run(tmp_path, "append", run_key="r2")
    assert resumed.resumed and resumed.rows_written == 4
    assert rows(db("dst.db")) == [(i, f"v{i}") for i in range(1, 11)]
    # a complete append run is not resumed: the next one appends everything again
    assert run(tmp_path, "append", run_key="r3").rows_written == 10


def test_a_new_source_column_is_added_with_drift_add_and_fails_the_run_with_drift_fail(
    tmp_path: Path, db
) -> None:  # type: ignore[no-untyped-def]
    src = db("src.db")
    src.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, v TEXT)")
    src.execute("INSERT INTO src VALUES (1, 'a')")
    run(tmp_path, "append")
    src.execute("ALTER TABLE src ADD COLUMN extra DECIMAL(10,2)")
    src.execute("INSERT INTO src VALUES (2, 'b', '1.50')")
    with pytest.raises(
        MovementError, match="source has new columns not in dst: extra \\(schema_drift: fail\\)"
    ):
        run(tmp_path, "append", drift="fail", run_key="r2")
    run(tmp_path, "append", drift="add", run_key="r3")
    columns = [(r[1], r[2]) for r in db("dst.db").execute("PRAGMA table_info(dst)")]
    assert columns == [("id", "BIGINT"), ("v", "TEXT"), ("extra", "DECIMAL TEXT(10,2)")]


def test_a_query_source_copies_its_result(tmp_path: Path, db) -> None:  # type: ignore[no-untyped-def]
    src = db("src.db")
    src.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, v INTEGER)")
    src.executemany("INSERT INTO src VALUES (?, ?)", [(i, i * i) for i in range(1, 6)])
    run(tmp_path, "replace", query="SELECT id, v FROM src WHERE v > 4")
    assert rows(db("dst.db")) == [(3, 9), (4, 16), (5, 25)]


def test_a_column_type_that_cannot_be_carried_is_named(tmp_path: Path, db) -> None:  # type: ignore[no-untyped-def]
    db("src.db").execute("CREATE TABLE src (id INTEGER, shape GEOMETRY)")
    with pytest.raises(UnsupportedTypeError, match="source shop: column 'shape' has type 'GEOMETRY'"):
        run(tmp_path, "replace")


def test_a_missing_cursor_column_is_named(tmp_path: Path, db) -> None:  # type: ignore[no-untyped-def]
    db("src.db").execute("CREATE TABLE src (id INTEGER)")
    with pytest.raises(MovementError, match="source shop: no column 'updated' \\(have id\\)"):
        run(tmp_path, "incremental", cursor="updated")
