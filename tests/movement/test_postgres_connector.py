"""PostgreSQL source and sink: resumable reads, write modes, schema drift, types and failures."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.movement.harness_postgres import Harness
from workers.movement.connectors.postgres import PostgresSink, PostgresSource
from workers.movement.engine import RunResult, run_pipeline
from workers.movement.errors import CancelledError, MovementError, RetryableError
from workers.movement.interface import PipelineState, ReadSpec, WriteSpec
from workers.movement.types import Column, LogicalType, Schema, UnsupportedTypeError

pytestmark = pytest.mark.postgres

T = LogicalType


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.cleanup()


def run(
    pg: Harness,
    read: ReadSpec,
    write: WriteSpec,
    *,
    pipeline: str = "p",
    should_stop: Callable[[], bool] = lambda: False,
    source_options: dict[str, Any] | None = None,
) -> RunResult:
    source = PostgresSource("src", source_options or pg.options(), home=Path("."))
    sink = PostgresSink("dst", pg.options(), home=Path("."))
    source.open()
    sink.open()
    try:
        return run_pipeline(
            pipeline=pipeline,
            run_key=uuid.uuid4().hex,
            source=source,
            sink=sink,
            read=read,
            write=write,
            on_progress=lambda read, written: None,
            should_stop=should_stop,
        )
    finally:
        source.close()
        sink.close()


def read_all(pg: Harness, spec: ReadSpec, options: dict[str, Any] | None = None) -> tuple[Schema, list[Any]]:
    source = PostgresSource("src", options or pg.options(), home=Path("."))
    source.open()
    try:
        schema = source.schema(spec)
        return schema, [row for batch in source.batches(spec, schema) for row in batch.rows]
    finally:
        source.close()


def table(name: str) -> ReadSpec:
    return ReadSpec(table=name, query=None, batch_size=2)


# --- incremental ---------------------------------------------------------------------------

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cursor_type", "value"),
    [("BIGINT", lambda n: n), ("TIMESTAMPTZ", lambda n: T0 + timedelta(minutes=n))],
    ids=["bigint-cursor", "timestamptz-cursor"],
)
def test_incremental_loads_rows_sharing_the_last_cursor_value_once(
    pg: Harness, cursor_type: str, value: Callable[[int], Any]
) -> None:
    pg.execute(f"CREATE TABLE events (id BIGINT PRIMARY KEY, v {cursor_type}, note TEXT)")
    insert = "INSERT INTO events VALUES (%s, %s, %s)"
    # batch size 2: the second batch ends inside the group of rows with v = 2
    for id_, v in [(1, 1), (2, 2), (3, 2), (4, 2)]:
        pg.execute(insert, [id_, value(v), f"row {id_}"])
    read = ReadSpec(table="events", query=None, batch_size=2, cursor_column="v")
    write = WriteSpec(table="events_copy", mode="incremental")

    assert run(pg, read, write).rows_written == 4
    # later arrivals share the last cursor value, and a NULL cursor is never placed in the order
    pg.execute(insert, [5, value(2), "late, same cursor value"])
    pg.execute(insert, [6, value(3), "new value"])
    pg.execute(insert, [7, None, "no cursor value"])
    assert run(pg, read, write).rows_written == 2
    assert run(pg, read, write).rows_written == 0
    pg.execute(insert, [8, value(3), "same as the new last value"])
    assert run(pg, read, write).rows_written == 1

    ids = [row[0] for row in pg.execute("SELECT id FROM events_copy ORDER BY id")]
    assert ids == [1, 2, 3, 4, 5, 6, 8]


def test_incremental_with_keys_upserts_changed_rows(pg: Harness) -> None:
    pg.execute("CREATE TABLE items (id INT PRIMARY KEY, name TEXT, updated BIGINT)")
    pg.execute("INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)")
    read = ReadSpec(table="items", query=None, batch_size=10, cursor_column="updated")
    write = WriteSpec(table="items_copy", mode="incremental", key_columns=("id",))
    run(pg, read, write)
    pg.execute("UPDATE items SET name = 'a2', updated = 3 WHERE id = 1")
    run(pg, read, write)
    assert pg.execute("SELECT id, name FROM items_copy ORDER BY id") == [(1, "a2"), (2, "b")]


# --- upsert --------------------------------------------------------------------------------


def test_upsert_updates_existing_rows_and_adds_new_ones(pg: Harness) -> None:
    pg.execute("CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT, score NUMERIC(10,2))")
    pg.execute("INSERT INTO customers VALUES (1, 'ann', 1.50), (2, 'bob', 2.25), (3, 'cy', NULL)")
    read, write = table("customers"), WriteSpec(table="customers_copy", mode="upsert", key_columns=("id",))
    run(pg, read, write)
    pg.execute("UPDATE customers SET name = 'bobby', score = 9.99 WHERE id = 2")
    pg.execute("INSERT INTO customers VALUES (4, 'dee', 4.00)")
    run(pg, read, write)

    assert pg.execute("SELECT * FROM customers_copy ORDER BY id") == [
        (1, "ann", Decimal("1.50")),
        (2, "bobby", Decimal("9.99")),
        (3, "cy", None),
        (4, "dee", Decimal("4.00")),
    ]
    key = pg.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = 'customers_copy'::regclass AND i.indisprimary"
    )
    assert key == [("id",)]


def test_upsert_batch_with_a_key_twice_keeps_the_last_row(pg: Harness) -> None:
    schema = Schema((Column("id", T.INTEGER), Column("name", T.TEXT)))
    spec = WriteSpec(table="dups", mode="upsert", key_columns=("id",))
    sink = PostgresSink("dst", pg.options(), home=Path("."))
    sink.open()
    try:
        target = sink.prepare(spec, schema)
        state = PipelineState(pipeline="p", run_key="r", complete=False, position=None)
        sink.write(target, spec, schema, [(1, "first"), (2, "x"), (1, "second"), (1, "third")], state)
    finally:
        sink.close()
    assert pg.execute("SELECT * FROM dups ORDER BY id") == [(1, "third"), (2, "x")]


# --- replace -------------------------------------------------------------------------------


def test_replace_keeps_the_old_table_until_finish_commits(pg: Harness) -> None:
    pg.execute("CREATE TABLE src (id BIGINT PRIMARY KEY, name TEXT)")
    pg.execute("INSERT INTO src SELECT g, 'old ' || g FROM generate_series(1, 3) g")
    read, write = table("src"), WriteSpec(table="dst", mode="replace", key_columns=("id",))
    run(pg, read, write)
    old = pg.execute("SELECT * FROM dst ORDER BY id")
    assert len(old) == 3

    pg.execute("DELETE FROM src")
    pg.execute("INSERT INTO src SELECT g, 'new ' || g FROM generate_series(1, 5) g")
    calls = iter([False, True])
    with pytest.raises(CancelledError):
        run(pg, read, write, should_stop=lambda: next(calls, True))
    assert pg.execute("SELECT * FROM dst ORDER BY id") == old

    # a failure inside finish (a view depends on the old table) rolls the swap back
    pg.execute("CREATE VIEW dst_view AS SELECT * FROM dst")
    with pytest.raises(MovementError, match="^destination dst: ") as failed:
        run(pg, read, write)
    assert not failed.value.retryable
    assert pg.execute("SELECT * FROM dst_view ORDER BY id") == old
    pg.execute("DROP VIEW dst_view")

    # twice more: the swapped-in table's key index must not block the next staging table
    for _ in range(2):
        assert run(pg, read, write).rows_written == 5
    assert [r[1] for r in pg.execute("SELECT * FROM dst ORDER BY id")] == [f"new {i}" for i in range(1, 6)]
    leftovers = pg.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE '\\_mycelial\\_stage%%'"
        " AND relnamespace = to_regnamespace(%s)",
        [pg.schema],
    )
    assert leftovers == []


# --- schema drift --------------------------------------------------------------------------


def test_schema_drift_adds_new_columns_or_fails_naming_them(pg: Harness) -> None:
    pg.execute("CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT)")
    pg.execute("INSERT INTO people VALUES (1, 'ann')")
    read = table("people")
    run(pg, read, WriteSpec(table="people_copy", mode="append"))
    pg.execute("ALTER TABLE people ADD COLUMN email TEXT, ADD COLUMN born DATE")
    pg.execute("INSERT INTO people VALUES (2, 'bob', 'bob@example.com', '2000-01-02')")

    with pytest.raises(
        MovementError, match=r"new columns not in people_copy: email, born \(schema_drift: fail\)"
    ):
        run(pg, read, WriteSpec(table="people_copy", mode="append", schema_drift="fail"), pipeline="q")

    run(pg, read, WriteSpec(table="people_copy", mode="append", schema_drift="add"), pipeline="q")
    rows = pg.execute("SELECT id, name, email, born::text FROM people_copy ORDER BY id, email NULLS FIRST")
    assert rows == [
        (1, "ann", None, None),
        (1, "ann", None, None),
        (2, "bob", "bob@example.com", "2000-01-02"),
    ]


# --- sources: queries, names, types --------------------------------------------------------


def test_query_source_with_percent_signs_reads_incrementally(pg: Harness) -> None:
    pg.execute("CREATE TABLE products (id BIGINT PRIMARY KEY, price NUMERIC(8,2), label TEXT)")
    pg.execute("INSERT INTO products VALUES (1, 1.25, 'apple'), (2, 3.50, 'pear'), (3, 10.00, 'apricot')")
    query = "SELECT id, price * 2 AS doubled, label FROM products WHERE label LIKE 'a%' AND id %% 1 = 0;"
    spec = ReadSpec(table=None, query=query.replace("%%", "%"), batch_size=1, cursor_column="id")

    schema, rows = read_all(pg, spec)
    assert [(c.name, c.type) for c in schema.columns] == [
        ("id", T.BIGINT),
        ("doubled", T.DECIMAL),
        ("label", T.TEXT),
    ]
    assert rows == [(1, Decimal("2.50"), "apple"), (3, Decimal("20.00"), "apricot")]

    write = WriteSpec(table="doubled", mode="incremental")
    assert run(pg, spec, write).rows_written == 2
    pg.execute("INSERT INTO products VALUES (4, 1.00, 'avocado'), (5, 1.00, 'kiwi')")
    assert run(pg, spec, write).rows_written == 1
    assert [r[0] for r in pg.execute("SELECT id FROM doubled ORDER BY id")] == [1, 3, 4]


def test_schema_qualified_table_and_keys_from_the_primary_key(pg: Harness) -> None:
    pg.execute("CREATE TABLE pairs (b INT, a INT, note TEXT NOT NULL, PRIMARY KEY (a, b))")
    pg.execute("INSERT INTO pairs VALUES (1, 1, 'x'), (2, 1, 'y'), (1, 2, 'z')")
    options = {"dsn": pg.url}  # no schema option: the table names it
    schema, rows = read_all(pg, ReadSpec(table=f"{pg.schema}.pairs", query=None, batch_size=2), options)
    assert schema.primary_key == ("a", "b")
    assert [c.nullable for c in schema.columns] == [False, False, False]
    assert rows == [(1, 1, "x"), (2, 1, "y"), (1, 2, "z")]


def test_source_types_map_to_logical_types_and_timestamptz_arrives_in_utc(pg: Harness) -> None:
    pg.execute("CREATE TYPE mood AS ENUM ('happy', 'sad')")
    pg.execute(
        "CREATE TABLE typed (id SMALLINT PRIMARY KEY, r REAL, n NUMERIC, c CHAR(3), v VARCHAR(10),"
        " u UUID, m mood, j JSON, at TIMESTAMPTZ)"
    )
    pg.execute(
        "INSERT INTO typed VALUES (1, 0.5, 123.456, 'ab', 'vv',"
        " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'sad', '{\"k\": [1, 2]}', '2024-01-01 09:00+09')"
    )
    tokyo = {**pg.options(), "dsn": pg.url + "?options=-c%20TimeZone%3DAsia/Tokyo"}
    schema, rows = read_all(pg, table("typed"), tokyo)
    assert [c.type for c in schema.columns] == [
        T.INTEGER,
        T.FLOAT,
        T.DECIMAL,
        T.TEXT,
        T.TEXT,
        T.TEXT,
        T.TEXT,
        T.JSON,
        T.TIMESTAMPTZ,
    ]
    assert schema.column("n").precision is None
    assert rows == [
        (
            1,
            0.5,
            Decimal("123.456"),
            "ab ",
            "vv",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "sad",
            {"k": [1, 2]},
            datetime(2024, 1, 1, 0, 0, tzinfo=UTC),
        )
    ]
    assert rows[0][-1].tzinfo is UTC


def test_table_without_a_key_and_with_a_json_column_is_read_in_a_stable_order(pg: Harness) -> None:
    pg.execute("CREATE TABLE loose (doc JSON, n INT)")
    pg.execute("""INSERT INTO loose VALUES ('{"b": 1}', 2), ('[1]', 1), (NULL, 3), ('{"b": 1}', 2)""")
    spec = ReadSpec(table="loose", query=None, batch_size=3)
    _, rows = read_all(pg, spec)
    assert sorted(rows, key=lambda r: r[1]) == [([1], 1), ({"b": 1}, 2), ({"b": 1}, 2), (None, 3)]
    # resuming by offset continues after the rows already read
    source = PostgresSource("src", pg.options(), home=Path("."))
    source.open()
    try:
        schema = source.schema(spec)
        first = next(iter(source.batches(spec, schema)))
        source.close()
        source.open()
        rest = [
            r
            for b in source.batches(ReadSpec("loose", None, 3, start=first.position), schema)
            for r in b.rows
        ]
    finally:
        source.close()
    assert sorted(first.rows + rest, key=repr) == sorted(rows, key=repr)


@pytest.mark.parametrize(
    ("definition", "native"),
    [("POINT", "point"), ("TSVECTOR", "tsvector"), ("INTEGER[]", "integer[]"), ("INTERVAL", "interval")],
)
def test_unsupported_column_type_names_column_and_type(pg: Harness, definition: str, native: str) -> None:
    pg.execute(f"CREATE TABLE odd (id INT PRIMARY KEY, thing {definition})")
    with pytest.raises(UnsupportedTypeError) as raised:
        read_all(pg, table("odd"))
    assert (raised.value.column, raised.value.native_type) == ("thing", native)
    assert str(raised.value).startswith("source src: column 'thing' has type")


def test_large_read_uses_a_server_side_cursor_and_bounded_batches(pg: Harness) -> None:
    pg.execute("CREATE TABLE big (id BIGINT PRIMARY KEY, payload TEXT)")
    pg.execute("INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g")
    spec = ReadSpec(table="big", query=None, batch_size=5000)
    source = PostgresSource("src", pg.options(), home=Path("."))
    source.open()
    try:
        schema = source.schema(spec)
        total, largest, cursors = 0, 0, None
        for batch in source.batches(spec, schema):
            if cursors is None:
                cursors = source.conn.execute("SELECT name FROM pg_cursors").fetchall()
            total += len(batch.rows)
            largest = max(largest, len(batch.rows))
    finally:
        source.close()
    assert cursors == [("_mycelial_read",)]
    assert (total, largest) == (200000, 5000)


# --- sink types ----------------------------------------------------------------------------


def test_sink_declares_postgres_types_for_logical_types(pg: Harness) -> None:
    from tests.movement.harness import CONTRACT_COLUMNS, CONTRACT_ROWS

    pg.create_table("contract", CONTRACT_COLUMNS, CONTRACT_ROWS, primary_key=["id"])
    run(pg, table("contract"), WriteSpec(table="contract_copy", mode="append"), pipeline="types")
    declared = pg.execute(
        "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c"
        " JOIN pg_attribute a ON a.attrelid = 'contract_copy'::regclass AND a.attname = c.column_name"
        " WHERE table_schema = %s AND table_name = 'contract_copy' ORDER BY ordinal_position",
        [pg.schema],
    )
    assert [t for _, t in declared] == [
        "bigint",
        "integer",
        "bigint",
        "double precision",
        "numeric(18,4)",
        "text",
        "boolean",
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
        "bytea",
        "jsonb",
    ]
    assert pg.execute("SELECT * FROM contract_copy ORDER BY id") == CONTRACT_ROWS
    state = pg.execute("SELECT state->>'complete', state->>'rows_loaded' FROM _mycelial_state")
    assert state == [("true", "3")]


def test_sink_writes_into_a_users_table_with_other_column_types(pg: Harness) -> None:
    pg.execute("CREATE TABLE theirs (id SMALLINT, label VARCHAR(20), doc JSON, at TIMESTAMP)")
    schema = Schema(
        (Column("id", T.BIGINT), Column("label", T.TEXT), Column("doc", T.JSON), Column("at", T.TIMESTAMP))
    )
    spec = WriteSpec(table="theirs", mode="append")
    sink = PostgresSink("dst", pg.options(), home=Path("."))
    sink.open()
    try:
        target = sink.prepare(spec, schema)
        state = PipelineState(pipeline="p", run_key="r", complete=False, position=None)
        sink.write(target, spec, schema, [(7, "seven", {"a": 1}, datetime(2024, 1, 2, 3, 4, 5))], state)  # noqa: DTZ001
        with pytest.raises(MovementError, match="^destination dst: .*out of range") as failed:
            sink.write(target, spec, schema, [(70000, "too big", None, None)], state)
            sink.finish(target, spec, state)  # a batch's commit error comes by the next call at the latest
        assert not failed.value.retryable
    finally:
        sink.close()
    assert pg.execute("SELECT id, label, doc::text, at::text FROM theirs") == [
        (7, "seven", '{"a": 1}', "2024-01-02 03:04:05")
    ]


def test_integer_values_outside_the_range_fail_instead_of_wrapping(pg: Harness) -> None:
    schema = Schema((Column("id", T.INTEGER), Column("name", T.TEXT)))
    spec = WriteSpec(table="ints", mode="append")
    sink = PostgresSink("dst", pg.options(), home=Path("."))
    sink.open()
    try:
        target = sink.prepare(spec, schema)
        state = PipelineState(pipeline="p", run_key="r", complete=False, position=None)
        with pytest.raises(MovementError, match="column 'id' has a value outside the INTEGER range"):
            sink.write(target, spec, schema, [(1, "ok"), (2**40 + 5, "wraps to 5 in binary")], state)
        with pytest.raises(MovementError, match="^destination dst: a value does not fit"):
            sink.write(target, spec, schema, [(1, 2)], state)
        assert sink.load_state("p") is None
    finally:
        sink.close()
    assert pg.execute("SELECT count(*) FROM ints") == [(0,)]


# --- failures ------------------------------------------------------------------------------

PASSWORD = "s3cret"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test",
        f"host=127.0.0.1 port=1 user=postgres password={PASSWORD} dbname=test",
        "postgresql://postgres:${env:MYCELIAL_TEST_PG_PASSWORD}@127.0.0.1:1/test",
    ],
    ids=["url", "key-value", "env-reference"],
)
@pytest.mark.parametrize("role", ["source", "destination"])
def test_unreachable_server_is_retryable_and_never_shows_the_password(
    dsn: str, role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYCELIAL_TEST_PG_PASSWORD", PASSWORD)
    connector = (PostgresSource if role == "source" else PostgresSink)("pg", {"dsn": dsn}, home=Path("."))
    with pytest.raises(RetryableError) as raised:
        connector.open()
    connector.close()
    assert str(raised.value).startswith(f"{role} pg: cannot connect to PostgreSQL: ")
    assert "port 1" in str(raised.value)
    assert PASSWORD not in str(raised.value) and PASSWORD not in repr(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_malformed_dsn_is_not_retryable_and_masks_the_password() -> None:
    source = PostgresSource("pg", {"dsn": "postgresql://postgres:s3%cret@127.0.0.1:1/test"}, home=Path("."))
    with pytest.raises(MovementError) as raised:
        source.open()
    assert not raised.value.retryable
    assert str(raised.value).startswith("source pg: invalid PostgreSQL connection string: ")
    assert "s3" not in str(raised.value)


def test_missing_table_and_bad_query_are_not_retryable(pg: Harness) -> None:
    with pytest.raises(MovementError, match=f"^source src: no such table: {pg.schema}.nope$") as raised:
        read_all(pg, table("nope"))
    assert not raised.value.retryable
    with pytest.raises(MovementError, match='^source src: column "nope" does not exist$') as raised:
        read_all(pg, ReadSpec(table=None, query="SELECT nope FROM pg_class", batch_size=10))
    assert not raised.value.retryable


def test_permission_denied_is_not_retryable(pg: Harness) -> None:
    role = f"mycelial_t_{uuid.uuid4().hex[:8]}"
    pg.execute("CREATE TABLE secret (id INT PRIMARY KEY)")
    pg.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        options = {"dsn": pg.url.replace("postgres@", f"{role}@"), "schema": pg.schema}
        with pytest.raises(MovementError, match="^source src: permission denied") as raised:
            read_all(pg, table("secret"), options)
        assert not raised.value.retryable
    finally:
        pg.execute(f'DROP ROLE "{role}"')


def test_connection_lost_mid_read_is_retryable(pg: Harness) -> None:
    pg.execute("CREATE TABLE many (id INT PRIMARY KEY)")
    pg.execute("INSERT INTO many SELECT generate_series(1, 100)")
    spec = ReadSpec(table="many", query=None, batch_size=10)
    source = PostgresSource("src", pg.options(), home=Path("."))
    source.open()
    try:
        batches = source.batches(spec, source.schema(spec))
        next(batches)
        pid = source.conn.info.backend_pid
        pg.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(RetryableError, match="^source src: "):
            list(batches)
    finally:
        source.close()


def test_state_round_trips_through_the_destination(pg: Harness) -> None:
    sink = PostgresSink("dst", pg.options(), home=Path("."))
    sink.open()
    try:
        assert sink.load_state("p") is None
        schema = Schema((Column("id", T.BIGINT),))
        spec = WriteSpec(table="t", mode="append")
        target = sink.prepare(spec, schema)
        position = {"cursor": {"datetime": "2024-01-01T00:00:00+00:00"}, "seen": {"abc": 2}}
        state = PipelineState("p", "run-1", False, position, rows_loaded=1, extra={"note": "ü"})
        sink.write(target, spec, schema, [(1,)], state)
        assert sink.load_state("p") == state
    finally:
        sink.close()
    with psycopg.connect(pg.url) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{pg.schema}".t').fetchone() == (1,)
