"""The MySQL/MariaDB connector's own behaviour, against the machine's server (see harness_mysql)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.movement.harness_mysql import Harness
from workers.movement.connectors.mysql import MysqlSink, MysqlSource
from workers.movement.engine import RunResult, run_pipeline
from workers.movement.errors import CancelledError, MovementError, RetryableError
from workers.movement.interface import Mode, PipelineState, ReadSpec, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import Column, LogicalType, Schema, UnsupportedTypeError

T = LogicalType


@pytest.fixture
def my(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.cleanup()


@pytest.fixture
def name() -> str:
    """A suffix for table and pipeline names, distinct even where the harness shares a database."""
    return uuid.uuid4().hex[:8]


def run(
    tmp_path: Path,
    my: Harness,
    mode: Mode,
    *,
    pipeline: str,
    dst: str,
    table: str | None = None,
    query: str | None = None,
    cursor: str | None = None,
    keys: tuple[str, ...] = (),
    drift: str = "add",
    batch_size: int = 3,
    stop_after_batches: int | None = None,
    run_key: str | None = None,
) -> RunResult:
    source = make_source("mysql", "shop", my.options(), home=tmp_path)
    sink = make_sink("mysql", "warehouse", my.options(), home=tmp_path)
    batches = iter(range(10**9))
    with source, sink:
        return run_pipeline(
            pipeline=pipeline,
            run_key=run_key or f"r-{uuid.uuid4().hex[:8]}",  # every run has its own key
            source=source,
            sink=sink,
            read=ReadSpec(
                table=table, query=query, batch_size=batch_size, cursor_column=cursor, key_columns=keys
            ),
            write=WriteSpec(table=dst, mode=mode, key_columns=keys, schema_drift=drift),  # type: ignore[arg-type]
            on_progress=lambda read, written: None,
            should_stop=lambda: stop_after_batches is not None and next(batches) >= stop_after_batches,
        )


def read(tmp_path: Path, my: Harness, *, table: str | None = None, query: str | None = None) -> list[Any]:
    source = MysqlSource("reader", my.options(), home=tmp_path)
    with source:
        spec = ReadSpec(table=table, query=query, batch_size=1000)
        schema = source.schema(spec)
        return sorted((row for batch in source.batches(spec, schema) for row in batch.rows), key=repr)


# --- modes -------------------------------------------------------------------------------------


def test_incremental_loads_rows_sharing_the_last_cursor_value_across_batches_exactly_once(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst, pipeline = f"inc_src_{name}", f"inc_dst_{name}", f"inc-{name}"
    columns = [Column("id", T.BIGINT, nullable=False), Column("updated", T.TIMESTAMPTZ)]
    t1, t2, t3 = (datetime(2025, 1, d, 12, 0, 0, 250000, tzinfo=UTC) for d in (1, 2, 3))
    # five rows share t2 and straddle the batch boundaries (batch size 2)
    my.create_table(src, columns, [(1, t1), (2, t2), (3, t2), (4, t2), (5, t2), (6, t2)], primary_key=["id"])

    first = run(
        tmp_path, my, "incremental", pipeline=pipeline, table=src, dst=dst, cursor="updated", batch_size=2
    )
    assert first.rows_written == 6

    # a late row with the same cursor value as the last one, and a newer one
    my.insert(src, columns, [(7, t2), (8, t3)])
    second = run(
        tmp_path, my, "incremental", pipeline=pipeline, table=src, dst=dst, cursor="updated", run_key="r2"
    )
    assert second.rows_written == 2
    third = run(
        tmp_path, my, "incremental", pipeline=pipeline, table=src, dst=dst, cursor="updated", run_key="r3"
    )
    assert third.rows_written == 0
    assert [r[0] for r in read(tmp_path, my, query=f"SELECT id FROM {dst}")] == list(range(1, 9))


def test_a_cancelled_append_run_is_resumed_from_the_committed_batch(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst, pipeline = f"res_src_{name}", f"res_dst_{name}", f"res-{name}"
    columns = [Column("id", T.BIGINT, nullable=False), Column("label", T.TEXT)]
    my.create_table(src, columns, [(i, f"row {i}") for i in range(1, 11)], primary_key=["id"])
    with pytest.raises(CancelledError):
        run(tmp_path, my, "append", pipeline=pipeline, table=src, dst=dst, stop_after_batches=2)
    assert my.execute(f"SELECT COUNT(*) FROM {dst}") == [(6,)]  # two whole batches, with their position

    resumed = run(tmp_path, my, "append", pipeline=pipeline, table=src, dst=dst, run_key="r2")
    assert resumed.resumed
    assert my.execute(f"SELECT id FROM {dst} ORDER BY id") == [(i,) for i in range(1, 11)]


def test_upsert_updates_existing_keys_and_keeps_keys_that_differ_only_in_case_or_spaces(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst, pipeline = f"ups_src_{name}", f"ups_dst_{name}", f"ups-{name}"
    columns = [Column("code", T.TEXT, nullable=False), Column("qty", T.INTEGER)]
    with my.conn.cursor() as cursor:
        collation = MysqlSink._binary_collation(cursor)  # a no-pad one: 'a' and 'a ' are two keys
    my.execute(
        f"CREATE TABLE {src} (code VARCHAR(20) COLLATE {collation} PRIMARY KEY, qty INT) CHARSET=utf8mb4"
    )
    my.insert(src, columns, [("a", 1), ("b", 2), ("🍄", 3)])
    run(tmp_path, my, "upsert", pipeline=pipeline, table=src, dst=dst, keys=("code",))

    my.execute(f"UPDATE {src} SET qty = 20 WHERE code = 'b'")
    my.insert(src, columns, [("A", 4), ("c", 5)])
    run(tmp_path, my, "upsert", pipeline=pipeline, table=src, dst=dst, keys=("code",), run_key="r2")
    my.insert(src, columns, [("a ", 6)])
    run(tmp_path, my, "upsert", pipeline=pipeline, table=src, dst=dst, keys=("code",), run_key="r3")

    assert sorted(my.execute(f"SELECT code, qty FROM {dst}")) == sorted(
        [("a", 1), ("b", 20), ("🍄", 3), ("A", 4), ("c", 5), ("a ", 6)]
    )
    key = my.execute(
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY'",
        (dst,),
    )
    assert key == [("code",)]


def test_upsert_into_a_table_without_a_unique_key_on_the_key_columns_is_refused(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst = f"upk_src_{name}", f"upk_dst_{name}"
    my.create_table(src, [Column("id", T.BIGINT, nullable=False)], [(1,)], primary_key=["id"])
    my.execute(f"CREATE TABLE {dst} (id BIGINT)")
    with pytest.raises(MovementError, match=rf"^destination warehouse: table {dst} has no primary key"):
        run(tmp_path, my, "upsert", pipeline=f"upk-{name}", table=src, dst=dst, keys=("id",))


def test_a_failed_replace_leaves_the_old_table_and_the_next_one_swaps(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst, pipeline = f"rep_src_{name}", f"rep_dst_{name}", f"rep-{name}"
    columns = [Column("id", T.BIGINT, nullable=False), Column("label", T.TEXT)]
    my.create_table(src, columns, [(1, "old")], primary_key=["id"])
    run(tmp_path, my, "replace", pipeline=pipeline, table=src, dst=dst)

    my.execute(f"DELETE FROM {src}")
    my.insert(src, columns, [(i, "new") for i in range(1, 8)])
    with pytest.raises(CancelledError):
        run(tmp_path, my, "replace", pipeline=pipeline, table=src, dst=dst, stop_after_batches=1)
    assert my.execute(f"SELECT id, label FROM {dst}") == [(1, "old")]

    result = run(tmp_path, my, "replace", pipeline=pipeline, table=src, dst=dst, run_key="r3")
    assert result.rows_written == 7
    assert my.execute(f"SELECT DISTINCT label FROM {dst}") == [("new",)]
    assert not [t for t in my.tables() if t.startswith("_mycelial_") and dst in t]


def test_a_crash_between_the_committed_state_and_the_swap_is_settled_by_the_next_run(
    tmp_path: Path, my: Harness, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst, pipeline = f"swp_src_{name}", f"swp_dst_{name}", f"swp-{name}"
    columns = [Column("id", T.BIGINT, nullable=False)]
    my.create_table(src, columns, [(1,)], primary_key=["id"])
    run(tmp_path, my, "replace", pipeline=pipeline, table=src, dst=dst)
    my.insert(src, columns, [(2,), (3,)])

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # the daemon dies right after committing the complete state

    with monkeypatch.context() as patch:
        patch.setattr(MysqlSink, "_swap", crash)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, my, "replace", pipeline=pipeline, table=src, dst=dst, run_key="r2")
    assert my.execute(f"SELECT id FROM {dst}") == [(1,)]  # not swapped yet

    sink = MysqlSink("warehouse", my.options(), home=tmp_path)
    with sink:
        state = sink.load_state(pipeline)
    assert state is not None and state.complete and state.run_key == "r2" and state.rows_loaded == 3
    assert my.execute(f"SELECT id FROM {dst} ORDER BY id") == [(1,), (2,), (3,)]
    assert my.execute("SELECT pending_swap FROM _mycelial_state WHERE pipeline = %s", (pipeline,)) == [
        (None,)
    ]
    assert not [t for t in my.tables() if t.startswith("_mycelial_") and dst in t]


def test_a_crash_after_the_swap_but_before_the_record_is_cleared_changes_nothing_more(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst, pipeline = f"sw2_src_{name}", f"sw2_dst_{name}", f"sw2-{name}"
    my.create_table(src, [Column("id", T.BIGINT, nullable=False)], [(1,), (2,)], primary_key=["id"])
    run(tmp_path, my, "replace", pipeline=pipeline, table=src, dst=dst)
    pending = json.dumps({"stage": f"_mycelial_stage_{dst}", "target": dst})
    my.execute("UPDATE _mycelial_state SET pending_swap = %s WHERE pipeline = %s", (pending, pipeline))

    sink = MysqlSink("warehouse", my.options(), home=tmp_path)
    with sink:
        state = sink.load_state(pipeline)
    assert state is not None and state.complete
    assert my.execute(f"SELECT id FROM {dst} ORDER BY id") == [(1,), (2,)]
    assert my.execute("SELECT pending_swap FROM _mycelial_state WHERE pipeline = %s", (pipeline,)) == [
        (None,)
    ]


def test_replace_into_a_long_and_a_database_qualified_table_name(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src = f"long_src_{name}"
    dst = f"long_destination_table_name_that_fills_mysqls_limit_{name}"  # 60 characters
    my.create_table(src, [Column("id", T.BIGINT, nullable=False)], [(1,), (2,)], primary_key=["id"])
    database = my.options()["database"]
    run(tmp_path, my, "replace", pipeline=f"long-{name}", table=f"{database}.{src}", dst=f"{database}.{dst}")
    run(tmp_path, my, "replace", pipeline=f"long-{name}", table=src, dst=dst, run_key="r2")
    assert my.execute(f"SELECT id FROM {dst} ORDER BY id") == [(1,), (2,)]


def test_a_new_source_column_is_added_with_drift_add_and_fails_the_run_with_drift_fail(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst = f"dr_src_{name}", f"dr_dst_{name}"
    columns = [Column("id", T.BIGINT, nullable=False), Column("Name", T.TEXT), Column("extra", T.JSON)]
    my.create_table(src, columns, [(1, "a", {"k": "🍄"})], primary_key=["id"])
    my.execute(f"CREATE TABLE {dst} (id BIGINT, name VARCHAR(10))")

    with pytest.raises(MovementError) as failed:
        run(tmp_path, my, "append", pipeline=f"dr1-{name}", table=src, dst=dst, drift="fail")
    assert str(failed.value) == (
        f"destination warehouse: source has new columns not in {dst}: extra (schema_drift: fail)"
    )

    run(tmp_path, my, "append", pipeline=f"dr2-{name}", table=src, dst=dst, drift="add")
    assert read(tmp_path, my, table=dst) == [(1, "a", {"k": "🍄"})]


def test_a_value_that_does_not_fit_an_existing_column_is_a_job_error(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst = f"mis_src_{name}", f"mis_dst_{name}"
    my.create_table(
        src, [Column("id", T.BIGINT, nullable=False), Column("n", T.TEXT)], [(1, "abc")], primary_key=["id"]
    )
    my.execute(f"CREATE TABLE {dst} (id BIGINT, n INT)")
    with pytest.raises(
        MovementError,
        match=r"^destination warehouse: Incorrect integer value: 'abc' for column .*`n` at row 1"
        r" \(MySQL error 1366\)$",
    ) as failed:
        run(tmp_path, my, "append", pipeline=f"mis-{name}", table=src, dst=dst)
    assert not isinstance(failed.value, RetryableError)
    assert my.execute(f"SELECT COUNT(*) FROM {dst}") == [(0,)]


# --- sources -----------------------------------------------------------------------------------


def test_a_query_source_is_typed_from_its_result_and_can_be_read_incrementally(
    tmp_path: Path, my: Harness, name: str
) -> None:
    src, dst = f"q_src_{name}", f"q_dst_{name}"
    columns = [
        Column("id", T.BIGINT, nullable=False),
        Column("label", T.TEXT),
        Column("price", T.DECIMAL, precision=10, scale=2),
        Column("ok", T.BOOLEAN),
        Column("at", T.TIMESTAMP),
    ]
    rows = [
        (1, "apple", Decimal("1.50"), True, datetime(2025, 1, 1)),  # noqa: DTZ001
        (2, "avocado", Decimal("2.25"), False, datetime(2025, 1, 2)),  # noqa: DTZ001
        (3, "banana", Decimal("0.75"), True, datetime(2025, 1, 3)),  # noqa: DTZ001
        (4, "apricot", Decimal("3.00"), None, datetime(2025, 1, 3)),  # noqa: DTZ001
    ]
    my.create_table(src, columns, rows, primary_key=["id"])
    query = f"SELECT id, UPPER(label) AS label, price * 2 AS doubled, ok, at FROM {src} WHERE label LIKE 'a%'"

    source = MysqlSource("shop", my.options(), home=tmp_path)
    with source:
        schema = source.schema(ReadSpec(table=None, query=query, batch_size=10))
    assert [(c.name, c.type) for c in schema.columns] == [
        ("id", T.BIGINT),
        ("label", T.TEXT),
        ("doubled", T.DECIMAL),
        ("ok", T.BOOLEAN),
        ("at", T.TIMESTAMP),
    ]
    assert schema.column("doubled").scale == 2

    result = run(
        tmp_path, my, "incremental", pipeline=f"q-{name}", query=query, dst=dst, cursor="at", batch_size=2
    )
    assert result.rows_written == 3
    assert read(tmp_path, my, table=dst) == [
        (1, "APPLE", Decimal("3.00"), True, datetime(2025, 1, 1)),  # noqa: DTZ001
        (2, "AVOCADO", Decimal("4.50"), False, datetime(2025, 1, 2)),  # noqa: DTZ001
        (4, "APRICOT", Decimal("6.00"), None, datetime(2025, 1, 3)),  # noqa: DTZ001
    ]
    # the second run asks for at >= the last value: a parameter beside the query's own '%'
    again = run(
        tmp_path, my, "incremental", pipeline=f"q-{name}", query=query, dst=dst, cursor="at", run_key="r2"
    )
    assert again.rows_written == 0


def test_native_types_map_to_logical_types(tmp_path: Path, my: Harness, name: str) -> None:
    table = f"nat_{name}"
    my.execute(
        f"CREATE TABLE {table} (id INT PRIMARY KEY, flag BOOL, tiny TINYINT, bits BIT(1), wide BIT(12),"
        " u_int INT UNSIGNED, u_big BIGINT UNSIGNED, yr YEAR, f FLOAT, num NUMERIC(6,3), e ENUM('x','y'),"
        " s SET('p','q'), doc JSON, vb VARBINARY(8), d DATE, dt DATETIME(3), ts TIMESTAMP NULL DEFAULT NULL)"
    )
    my.execute(
        f"INSERT INTO {table} VALUES (1, TRUE, -5, b'1', b'100000000001', 4294967295, 18446744073709551615,"
        " 2024, 0.5, 123.456, 'y', 'p,q', '{\"a\": [1, null]}', x'00ff', '0000-00-00',"
        " '1000-01-01 00:00:00.123', '2038-01-19 03:14:07')"
    )
    source = MysqlSource("shop", my.options(), home=tmp_path)
    with source:
        schema = source.schema(ReadSpec(table=table, query=None, batch_size=10))
    assert {c.name: c.type for c in schema.columns} == {
        "id": T.INTEGER,
        "flag": T.BOOLEAN,
        "tiny": T.INTEGER,
        "bits": T.BOOLEAN,
        "wide": T.BIGINT,
        "u_int": T.BIGINT,
        "u_big": T.DECIMAL,
        "yr": T.INTEGER,
        "f": T.FLOAT,
        "num": T.DECIMAL,
        "e": T.TEXT,
        "s": T.TEXT,
        "doc": T.JSON,
        "vb": T.BYTES,
        "d": T.DATE,
        "dt": T.TIMESTAMP,
        "ts": T.TIMESTAMPTZ,
    }
    assert schema.primary_key == ("id",)
    assert (schema.column("num").precision, schema.column("num").scale) == (6, 3)
    assert read(tmp_path, my, table=table) == [
        (
            1,
            True,
            -5,
            True,
            2049,
            4294967295,
            Decimal("18446744073709551615"),
            2024,
            0.5,
            Decimal("123.456"),
            "y",
            "p,q",
            {"a": [1, None]},
            b"\x00\xff",
            None,  # a zero date is not a date
            datetime(1000, 1, 1, 0, 0, 0, 123000),  # noqa: DTZ001
            datetime(2038, 1, 19, 3, 14, 7, tzinfo=UTC),
        )
    ]


@pytest.mark.parametrize("column_type", ["GEOMETRY", "TIME(3)", "POINT"])
def test_a_column_type_that_cannot_be_carried_names_the_column_and_type(
    tmp_path: Path, my: Harness, name: str, column_type: str
) -> None:
    table = f"uns_{name}"
    my.execute(f"CREATE TABLE {table} (id INT, shape {column_type})")
    source = MysqlSource("shop", my.options(), home=tmp_path)
    with source, pytest.raises(UnsupportedTypeError) as failed:
        source.schema(ReadSpec(table=table, query=None, batch_size=10))
    assert failed.value.column == "shape"
    assert failed.value.native_type == column_type.lower()
    assert str(failed.value).startswith("source shop: column 'shape' has type")

    with source, pytest.raises(UnsupportedTypeError, match="column 'shape' has type"):
        source.schema(ReadSpec(table=None, query=f"SELECT shape FROM {table}", batch_size=10))


def test_a_missing_table_and_a_bad_query_are_job_errors_naming_the_source(
    tmp_path: Path, my: Harness, name: str
) -> None:
    source = MysqlSource("shop", my.options(), home=tmp_path)
    with source:
        with pytest.raises(MovementError, match=rf"^source shop: no such table .*: nope_{name}$") as missing:
            source.schema(ReadSpec(table=f"nope_{name}", query=None, batch_size=10))
        with pytest.raises(MovementError, match=r"^source shop: .*SQL syntax.*\(MySQL error 1064\)$") as bad:
            source.schema(ReadSpec(table=None, query="SELEC 1", batch_size=10))
        with pytest.raises(
            MovementError, match=r"^source shop: Table .* doesn't exist \(MySQL error 1146\)$"
        ):
            source.schema(ReadSpec(table=None, query=f"SELECT * FROM nope_{name}", batch_size=10))
    assert not isinstance(missing.value, RetryableError) and not isinstance(bad.value, RetryableError)


def test_a_table_the_user_may_not_read_is_a_job_error(tmp_path: Path, my: Harness, name: str) -> None:
    allowed, denied, user = f"ok_{name}", f"secret_{name}", f"mycelial_limited_{name}"
    for table in (allowed, denied):
        my.create_table(table, [Column("id", T.BIGINT, nullable=False)], [(1,)], primary_key=["id"])
    database = my.options()["database"]
    try:
        my.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'limited-pw'")
    except Exception as exc:  # no privilege to make users here
        pytest.skip(f"cannot create a user: {exc}")
    try:
        my.execute(f"GRANT SELECT ON `{database}`.`{allowed}` TO '{user}'@'%%'")
        options = {**my.options(), "user": user, "password": "limited-pw"}
        source = MysqlSource("shop", options, home=tmp_path)
        with source:
            assert source.schema(ReadSpec(table=allowed, query=None, batch_size=10)).names == ["id"]
            with pytest.raises(MovementError, match=rf"^source shop: no such table .*: {denied}$"):
                source.schema(ReadSpec(table=denied, query=None, batch_size=10))
            with pytest.raises(
                MovementError, match=r"^source shop: SELECT command denied .*\(MySQL error 1142\)$"
            ):
                source.schema(ReadSpec(table=None, query=f"SELECT id FROM {denied}", batch_size=10))
    finally:
        my.execute(f"DROP USER '{user}'@'%%'")


def test_an_abandoned_read_does_not_drain_the_stream_and_the_source_reconnects(
    tmp_path: Path, my: Harness, name: str
) -> None:
    table = f"big_{name}"
    schema_columns = [Column("id", T.BIGINT, nullable=False), Column("pad", T.TEXT)]
    my.create_table(table, schema_columns, [], primary_key=["id"])
    if my.execute("SELECT COUNT(*) FROM information_schema.ENGINES WHERE ENGINE = 'SEQUENCE'") == [(1,)]:
        my.execute(f"INSERT INTO {table} SELECT seq, REPEAT('x', 200) FROM seq_1_to_200000")  # MariaDB
    else:
        my.insert(table, schema_columns, [(i, "x" * 200) for i in range(1, 200001)])
    source = MysqlSource("shop", my.options(), home=tmp_path)
    with source:
        spec = ReadSpec(table=table, query=None, batch_size=100)
        schema = source.schema(spec)
        batches = source.batches(spec, schema)
        assert len(next(batches).rows) == 100
        started = time.monotonic()
        batches.close()
        assert time.monotonic() - started < 1.0
        assert source.schema(spec) == schema  # a new connection
        assert sum(len(b.rows) for b in source.batches(spec, schema)) == 200000


# --- connections -------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(("role", "cls"), [("source", MysqlSource), ("destination", MysqlSink)])
def test_an_unreachable_server_is_retryable_and_the_message_has_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str, cls: type[MysqlSource] | type[MysqlSink]
) -> None:
    monkeypatch.setenv("MYCELIAL_TEST_MYSQL_SECRET", "s3cr3t-Passw0rd")
    port = _closed_port()
    options = {
        "host": "127.0.0.1",
        "port": port,
        "user": "app",
        "password": "${env:MYCELIAL_TEST_MYSQL_SECRET}",
        "database": "shop",
    }
    connector = cls("db", options, home=tmp_path)
    with pytest.raises(RetryableError) as failed:
        connector.open()
    connector.close()
    message = str(failed.value)
    assert message.startswith(f"{role} db: cannot connect to MySQL at 127.0.0.1:{port}: ")
    assert "refused" in message.lower()
    assert "s3cr3t" not in message and "s3cr3t" not in repr(failed.value.__cause__)


def test_wrong_credentials_are_a_job_error_without_the_password(tmp_path: Path, my: Harness) -> None:
    options = {**my.options(), "user": "mycelial_nobody", "password": "s3cr3t-Passw0rd"}
    source = MysqlSource("shop", options, home=tmp_path)
    with pytest.raises(
        MovementError, match=r"^source shop: cannot connect to MySQL at .*Access denied"
    ) as failed:
        source.open()
    assert not isinstance(failed.value, RetryableError)
    assert "s3cr3t" not in str(failed.value)


def test_an_unset_password_reference_is_named_without_connecting(tmp_path: Path) -> None:
    options = {"password": "${env:MYCELIAL_TEST_UNSET_VARIABLE}", "database": "shop"}
    with pytest.raises(
        MovementError, match=r"^destination dst: environment variable MYCELIAL_TEST_UNSET_VARIABLE"
    ):
        MysqlSink("dst", options, home=tmp_path).open()


# --- the sink's types --------------------------------------------------------------------------


def test_timestamps_outside_the_timestamp_range_and_wide_decimals_round_trip(
    tmp_path: Path, my: Harness, name: str
) -> None:
    table = f"wide_{name}"
    schema = Schema(
        (
            Column("key", T.TEXT, nullable=False),
            Column("tz", T.TIMESTAMPTZ),
            Column("naive", T.TIMESTAMP),
            Column("amount", T.DECIMAL),  # no precision: DECIMAL(65,30)
            Column("day", T.DATE),
        )
    )
    rows = [
        ("🍄" * 100, datetime(1, 1, 1, tzinfo=UTC), datetime(1, 1, 1), Decimal("1e-30"), date(1, 1, 1)),  # noqa: DTZ001
        (
            "b",
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999999),  # noqa: DTZ001
            Decimal("-12345678901234567890123456789012345.123456789012345678901234567890"),
            date(9999, 12, 31),
        ),
        ("c", datetime(2100, 6, 1, 12, tzinfo=UTC), None, Decimal("0.1"), None),
    ]
    spec = WriteSpec(table=table, mode="upsert", key_columns=("key",))
    sink = MysqlSink("warehouse", my.options(), home=tmp_path)
    state = PipelineState(pipeline=f"wide-{name}", run_key="r", complete=False, position=None)
    with sink:
        target = sink.prepare(spec, schema)
        sink.write(target, spec, schema, rows, state)
        sink.finish(target, spec, state)
    assert read(tmp_path, my, table=table) == sorted(rows, key=repr)
