"""Stored values: sources hand some columns over unconverted, and PostgreSQL's text COPY must read
them as the very values the typed path gives, or reject them naming the line and column."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.movement.harness_csv import csv_field
from tests.movement.harness_postgres import Harness
from workers.movement.connectors.postgres import PostgresSink
from workers.movement.connectors.sqlite import SqliteSource
from workers.movement.engine import RunResult, run_pipeline
from workers.movement.errors import MovementError
from workers.movement.interface import Mode, PipelineState, ReadSpec, SourceBatch, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import Column, LogicalType, Row, Schema

pytestmark = pytest.mark.postgres

T = LogicalType


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def naive(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return utc(year, month, day, hour, minute, second, us).replace(tzinfo=None)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.cleanup()


@dataclass
class Seen:
    """What the source was asked to read and the sink to write."""

    read: list[frozenset[str]] = field(default_factory=list)
    write: list[frozenset[str]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)


def run(
    pg: Harness,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    options: dict[str, Any],
    write: WriteSpec,
    *,
    read: ReadSpec | None = None,
    typed: bool = False,
) -> tuple[RunResult, Seen]:
    """One run into PostgreSQL; ``typed`` makes the source offer no stored columns (the oracle)."""
    source = make_source(kind, "src", options, home=Path("."))
    sink = make_sink("postgres", "dst", pg.options(), home=Path("."))
    seen = Seen()
    read_batches, write_rows = source.batches, sink.write

    def batches(spec: ReadSpec, schema: Schema) -> Iterator[SourceBatch]:
        seen.read.append(spec.as_stored)
        return read_batches(spec, schema)

    def rows_written(
        target: str, spec: WriteSpec, schema: Schema, rows: list[Row], state: PipelineState
    ) -> None:
        seen.write.append(spec.as_stored)
        seen.rows.extend(rows)
        write_rows(target, spec, schema, rows, state)

    monkeypatch.setattr(source, "batches", batches)
    monkeypatch.setattr(sink, "write", rows_written)
    if typed:
        monkeypatch.setattr(source, "stored_columns", lambda schema, reads_text: frozenset())
    with source, sink:
        result = run_pipeline(
            pipeline=write.table,
            run_key=uuid.uuid4().hex,
            source=source,
            sink=sink,
            read=read or ReadSpec(table="t", query=None, batch_size=2),
            write=write,
            on_progress=lambda read, written: None,
            should_stop=lambda: False,
        )
    return result, seen


def sqlite_table(path: Path, ddl: str, rows: list[Row]) -> dict[str, Any]:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(ddl)
        conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' for _ in rows[0])})", rows)
    return {"path": str(path)}


def csv_file(path: Path, columns: dict[str, str], lines: list[str]) -> dict[str, Any]:
    path.write_text("".join(f"{line}\n" for line in [",".join(columns), *lines]), encoding="utf-8")
    return {"path": str(path), "columns": columns}


def loaded(pg: Harness, table: str) -> list[Row]:
    return pg.execute(f"SELECT * FROM {table} ORDER BY id")


# --- SQLite → PostgreSQL -------------------------------------------------------------------

# BLOB affinity ("DECIMAL BLOB", "DOUBLE BLOB") keeps each value as inserted: floats, ints and text
SQLITE_DDL = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY, amount DECIMAL BLOB(12,2), ratio DOUBLE BLOB, day DATE,"
    " at TIMESTAMP, at_tz TIMESTAMPTZ, flag BOOLEAN, label TEXT, blob BLOB, doc JSON)"
)
SQLITE_ROWS: list[Row] = [
    (1, 12345.67, 7, "2024-01-01 10:00:00", "2024-01-01T10:00:00+02:00", "2024-01-01 10:00:00", 2,
     "tab\there, back\\slash\nnewline", b"\x00\xff", '{"a": [1, 2.5]}'),
    (2, 5, 0.25, 20240229, "2024-01-01 10:00:00.123456", "2024-01-01T12:00:00+02:00", "yes", "", b"",
     '[1, "x"]'),
    (3, "0.10", "1.5", "2024-03-01", "2024-01-01T10:00:00Z", "2024-06-30T23:30:00-05:30", 0, "\\N", b"\\N",
     '"text"'),
    (4, None, None, None, None, None, None, None, None, None),
]  # fmt: skip
SQLITE_EXPECTED: list[Row] = [
    (1, Decimal("12345.67"), 7.0, date(2024, 1, 1), naive(2024, 1, 1, 10), utc(2024, 1, 1, 10), True,
     "tab\there, back\\slash\nnewline", b"\x00\xff", {"a": [1, 2.5]}),
    (2, Decimal("5.00"), 0.25, date(2024, 2, 29), naive(2024, 1, 1, 10, 0, 0, 123456), utc(2024, 1, 1, 10),
     True, "", b"", [1, "x"]),
    (3, Decimal("0.10"), 1.5, date(2024, 3, 1), naive(2024, 1, 1, 10), utc(2024, 7, 1, 5), False, "\\N",
     b"\\N", "text"),
    (4, None, None, None, None, None, None, None, None, None),
]  # fmt: skip
SQLITE_STORED = frozenset({"amount", "ratio", "day", "at", "at_tz"})


@pytest.mark.parametrize("mode", ["append", "upsert", "replace"])
def test_sqlite_values_as_stored_arrive_in_postgresql_as_the_typed_path_gives_them(
    pg: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: Mode
) -> None:
    options = sqlite_table(tmp_path / "src.db", SQLITE_DDL, SQLITE_ROWS)
    keys = ("id",) if mode == "upsert" else ()
    result, seen = run(pg, monkeypatch, "sqlite", options, WriteSpec("stored", mode, key_columns=keys))
    _, oracle = run(pg, monkeypatch, "sqlite", options, WriteSpec("typed", "append"), typed=True)

    assert result.rows_written == 4
    assert loaded(pg, "stored") == loaded(pg, "typed") == SQLITE_EXPECTED
    # the stored columns went over as SQLite holds them; booleans (2, 'yes') were still converted
    assert seen.read == [SQLITE_STORED] and set(seen.write) == {SQLITE_STORED}
    assert [type(row[1]) for row in seen.rows[:3]] == [float, int, str]
    # an int is no plain date: the first batch's dates were converted, the second batch's went as text
    assert (seen.rows[1][3], seen.rows[2][3], seen.rows[0][6], seen.rows[1][6]) == (
        date(2024, 2, 29),
        "2024-03-01",
        True,
        True,
    )
    assert set(oracle.write) == {frozenset()} and isinstance(oracle.rows[0][1], Decimal)


def test_keys_and_cursor_reads_are_never_handed_over_as_stored(
    pg: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert PostgresSink.capabilities.reads_text == frozenset(T) - {T.JSON, T.BYTES}
    schema = Schema(tuple(Column(n, t) for n, t in [("b", T.BOOLEAN), ("d", T.DATE), ("j", T.JSON)]))
    assert SqliteSource("s", {}, home=tmp_path).stored_columns(schema, frozenset(T)) == {"d"}

    ddl = "CREATE TABLE t (day DATE PRIMARY KEY, amount DECIMAL(10,2), at TIMESTAMP)"
    rows: list[Row] = [
        ("2024-01-01", 1.5, "2024-01-01 10:00:00"),
        ("2024-01-02", "2.25", "2024-01-02T10:00+02:00"),
    ]
    options = sqlite_table(tmp_path / "src.db", ddl, rows)
    expected = [
        (date(2024, 1, 1), Decimal("1.50"), naive(2024, 1, 1, 10)),
        (date(2024, 1, 2), Decimal("2.25"), naive(2024, 1, 2, 10)),
    ]

    # the primary key is the resume position: typed; with read keys given, those are the key instead
    _, seen = run(pg, monkeypatch, "sqlite", options, WriteSpec("by_pk", "replace"))
    assert seen.read == [{"amount", "at"}] and set(seen.write) == {frozenset({"amount", "at"})}
    read = ReadSpec(table="t", query=None, batch_size=1, key_columns=("amount",))
    _, seen = run(pg, monkeypatch, "sqlite", options, WriteSpec("by_amount", "append"), read=read)
    assert seen.read == [{"day", "at"}] and set(seen.write) == {frozenset({"day", "at"})}

    # cursor reads remember their boundary rows by a hash of typed values: nothing stored
    read = ReadSpec(table="t", query=None, batch_size=1, cursor_column="at")
    write = WriteSpec("by_cursor", "incremental")
    _, seen = run(pg, monkeypatch, "sqlite", options, write, read=read)
    assert seen.read == [frozenset()] and set(seen.write) == {frozenset()}
    assert isinstance(seen.rows[0][1], Decimal)
    with closing(sqlite3.connect(tmp_path / "src.db")) as conn, conn:
        conn.execute("INSERT INTO t VALUES ('2024-01-03', 3, '2024-01-03 10:00:00')")
    assert run(pg, monkeypatch, "sqlite", options, write, read=read)[0].rows_written == 1
    for table in ("by_pk", "by_amount"):
        assert pg.execute(f"SELECT * FROM {table} ORDER BY day") == expected
    later = (date(2024, 1, 3), Decimal("3.00"), naive(2024, 1, 3, 10))
    assert pg.execute("SELECT * FROM by_cursor ORDER BY day") == [*expected, later]


# --- CSV → PostgreSQL ----------------------------------------------------------------------

CSV_COLUMNS = {
    "id": "bigint", "n": "integer", "big": "bigint", "ratio": "float", "amount": "decimal(12,2)",
    "flag": "boolean", "day": "date", "at": "timestamp", "at_tz": "timestamptz", "label": "text",
    "doc": "json",
}  # fmt: skip
CSV_LINES = [
    "1,+42,9223372036854775807,1e-3,12345.675,yes,2024-02-29,2024-01-01T10:00:00.5,2024-01-01 12:00:00+02:00,"
    'plain,"{""a"": [1, 2.5]}"',
    '2,-7,-9223372036854775808,-2.5E+10,.10,f,20240101,2024-01-01,2024-01-01T10:00:00,"",[1]',
    '3,0,1,0,-0.5,0,2024-01-01,2024-12-31 23:59:59.999999,2024-06-30T23:30:00-05:30,"a\tb \\N ""q""",'
    '"""text"""',
    "4,,,,,,,,,,",
]
CSV_EXPECTED: list[Row] = [
    (1, 42, 2**63 - 1, 0.001, Decimal("12345.68"), True, date(2024, 2, 29),
     naive(2024, 1, 1, 10, 0, 0, 500000), utc(2024, 1, 1, 10), "plain", {"a": [1, 2.5]}),
    (2, -7, -(2**63), -2.5e10, Decimal("0.10"), False, date(2024, 1, 1), naive(2024, 1, 1),
     utc(2024, 1, 1, 10), "", [1]),
    (3, 0, 1, 0.0, Decimal("-0.50"), False, date(2024, 1, 1), naive(2024, 12, 31, 23, 59, 59, 999999),
     utc(2024, 7, 1, 5), 'a\tb \\N "q"', "text"),
    (4, None, None, None, None, None, None, None, None, None, None),
]  # fmt: skip


def test_plain_csv_fields_arrive_in_postgresql_as_typed_parsing_gives_them(
    pg: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = csv_file(tmp_path / "data.csv", CSV_COLUMNS, CSV_LINES)
    _, seen = run(pg, monkeypatch, "csv", options, WriteSpec("stored", "append"))
    _, oracle = run(pg, monkeypatch, "csv", options, WriteSpec("typed", "append"), typed=True)

    assert loaded(pg, "stored") == loaded(pg, "typed") == CSV_EXPECTED
    # a CSV has no key: every column but text and json goes as the file has it
    stored = {"id", "n", "big", "ratio", "amount", "flag", "day", "at", "at_tz"}
    assert seen.read == [stored] and set(seen.write) == {frozenset(stored)}
    assert seen.rows[0][:6] == ("1", "+42", "9223372036854775807", "1e-3", "12345.675", "yes")
    assert set(oracle.write) == {frozenset()}


def test_a_chunk_with_other_valid_forms_is_parsed_and_still_loads_the_typed_values(
    pg: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    columns = {
        "id": "bigint",
        "n": "integer",
        "ratio": "float",
        "flag": "boolean",
        "day": "date",
        "at": "timestamptz",
    }
    plain = [f"{i},{i},{i}.5,t,2024-01-01,2024-01-01T10:00:00" for i in range(1, 501)]
    # the second chunk of 500 records: forms text_parser takes but PostgreSQL may not (or reads otherwise)
    odd = [
        "501, 42,Infinity,TRUE ,2024-01-02 , 2024-01-01T12:00:00+02:00",
        "502,1_000,-inf,No,2024-01-03,2024-01-01",
    ]
    options = csv_file(tmp_path / "data.csv", columns, plain + odd)
    read = ReadSpec(table="t", query=None, batch_size=1000)
    _, seen = run(pg, monkeypatch, "csv", options, WriteSpec("stored", "append"), read=read)
    run(pg, monkeypatch, "csv", options, WriteSpec("typed", "append"), read=read, typed=True)

    assert loaded(pg, "stored") == loaded(pg, "typed")
    assert loaded(pg, "stored")[-2:] == [
        (501, 42, float("inf"), True, date(2024, 1, 2), utc(2024, 1, 1, 10)),
        (502, 1000, float("-inf"), False, date(2024, 1, 3), utc(2024, 1, 1)),
    ]
    assert seen.rows[0][1:3] == ("1", "1.5") and seen.rows[500][1:3] == (42, float("inf"))


@pytest.mark.parametrize(
    ("column", "bad", "reason"),
    [
        ("amount", "NaN", "is not a decimal"),
        (
            "at",
            "2024-01-01T10:00:00+02:00",
            "has a UTC offset, which a timestamp column cannot keep (use timestamptz)",
        ),
    ],
)
def test_a_field_typed_parsing_rejects_fails_naming_line_and_column_and_replace_keeps_the_old_table(
    pg: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, column: str, bad: str, reason: str
) -> None:
    columns = {"id": "bigint", "amount": "decimal(10,2)", "at": "timestamp"}
    good = [f"{i},{i}.25,2024-01-0{i} 10:00:00" for i in range(1, 4)]
    run(pg, monkeypatch, "csv", csv_file(tmp_path / "data.csv", columns, good), WriteSpec("t", "replace"))
    old = loaded(pg, "t")

    fields = {"id": "4", "amount": "4.25", "at": "2024-01-04 10:00:00", column: bad}
    options = csv_file(tmp_path / "data.csv", columns, [*good, ",".join(fields.values())])
    message = f"source src: data.csv line 5: column '{column}': {bad!r} {reason}"
    with pytest.raises(MovementError, match=f"^{re.escape(message)}$"):
        run(pg, monkeypatch, "csv", options, WriteSpec("t", "replace"), read=ReadSpec("t", None, 100))
    assert loaded(pg, "t") == old == [(i, Decimal(f"{i}.25"), naive(2024, 1, i, 10)) for i in range(1, 4)]


def test_plain_digits_outside_the_integer_range_fail_in_postgresql_naming_the_column(
    pg: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = csv_file(tmp_path / "data.csv", {"id": "bigint", "q": "integer"}, ["1,5", "2,99999999999"])
    with pytest.raises(MovementError) as failed:
        run(pg, monkeypatch, "csv", options, WriteSpec("t", "append"), read=ReadSpec("t", None, 10))
    message = str(failed.value)
    assert message.startswith('destination dst: value "99999999999" is out of range for type integer')
    assert re.search(r"\(COPY \S+, line 2, column q: \"99999999999\"\)$", message), message
    assert not failed.value.retryable
    assert pg.execute("SELECT count(*) FROM t") == [(0,)]
    assert pg.execute("SELECT count(*) FROM _mycelial_state") == [(0,)]


# --- JSON beside stored columns (text COPY) ------------------------------------------------

DOCS: list[Any] = [
    {"a": [1, 2.5, {"b": None}], "ü": "東京 \\ \t"},
    [1, "x", True],
    "just text",
    42,
    1.5,
    None,
]


@pytest.mark.parametrize("kind", ["sqlite", "csv"])
def test_json_values_round_trip_beside_stored_columns(
    pg: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    texts = [None if doc is None else json.dumps(doc, ensure_ascii=False) for doc in DOCS]
    if kind == "sqlite":
        rows: list[Row] = [(i, f"{i}.5", text) for i, text in enumerate(texts)]
        options = sqlite_table(
            tmp_path / "src.db", "CREATE TABLE t (id INTEGER, amount DECIMAL, doc JSON)", rows
        )
    else:
        lines = [f"{i},{i}.5,{csv_field(text)}" for i, text in enumerate(texts)]
        options = csv_file(tmp_path / "d.csv", {"id": "bigint", "amount": "decimal", "doc": "json"}, lines)
    _, seen = run(pg, monkeypatch, kind, options, WriteSpec("docs", "append"))
    assert "amount" in set().union(*seen.write)  # the batches went by text COPY
    assert loaded(pg, "docs") == [(i, Decimal(f"{i}.5"), doc) for i, doc in enumerate(DOCS)]


# --- forms Python's parsers take that PostgreSQL reads otherwise: converted, not stored ------


@pytest.mark.parametrize(
    ("kind", "type_", "text", "expected"),
    [
        ("csv", "timestamp", "20240101T100000", naive(2024, 1, 1, 10)),
        ("csv", "timestamptz", "2024-01-01T10:00:00+01:00:30", utc(2024, 1, 1, 8, 59, 30)),
        ("sqlite", "date", "2024-01-01T23:00:00-05:00", date(2024, 1, 1)),
        # seven fractional digits (.NET's round-trip format): Python truncates, PostgreSQL rounds
        ("csv", "timestamp", "2024-01-01T10:00:00.1234567", naive(2024, 1, 1, 10, 0, 0, 123456)),
        ("csv", "timestamptz", "2024-12-31T23:59:59.9999995Z", utc(2024, 12, 31, 23, 59, 59, 999999)),
        ("sqlite", "timestamp", "2024-01-01 10:00:00.1234567", naive(2024, 1, 1, 10, 0, 0, 123456)),
        # read by Python, not by PostgreSQL
        ("csv", "date", "2024-W01-1", date(2024, 1, 1)),
        ("csv", "timestamp", "2024-01-01T10", naive(2024, 1, 1, 10)),
        ("csv", "timestamp", "2024-01-01 10:00:00,5", naive(2024, 1, 1, 10, 0, 0, 500000)),
        ("sqlite", "decimal", "1_000", Decimal("1000")),
    ],
)
def test_iso_and_number_forms_python_reads_load_as_their_typed_values(
    pg: Harness,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kind: str,
    type_: str,
    text: str,
    expected: Any,
) -> None:
    if kind == "sqlite":
        declared = "DECIMAL BLOB" if type_ == "decimal" else type_.upper()
        options = sqlite_table(tmp_path / "src.db", f"CREATE TABLE t (id INTEGER, v {declared})", [(1, text)])
    else:
        options = csv_file(tmp_path / "d.csv", {"id": "bigint", "v": type_}, [f"1,{csv_field(text)}"])
    _, seen = run(pg, monkeypatch, kind, options, WriteSpec("t", "append"))
    assert seen.write and all("v" in stored for stored in seen.write)
    assert loaded(pg, "t") == [(1, expected)]
