"""CSV and JSON-lines sources: folders load each file once, runs resume mid-file, rows stream."""

from __future__ import annotations

import json
import re
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from tests.movement.harness_csv import csv_field
from tests.movement.harness_jsonl import json_value
from workers.movement.connectors import files
from workers.movement.engine import RunResult, run_pipeline
from workers.movement.errors import CancelledError, MovementError
from workers.movement.interface import Mode, ReadSpec, Source, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import Column, LogicalType, Row, Schema

T = LogicalType
KINDS = ["csv", "jsonl"]
COLUMNS = {"id": "bigint", "name": "text", "amount": "decimal(10,2)"}
NAMES = list(COLUMNS)


def rows(first: int, count: int) -> list[Row]:
    return [(i, f'row {i}, "quoted"', Decimal(i) / 4) for i in range(first, first + count)]


def write(kind: str, path: Path, data: list[Row]) -> None:
    if kind == "csv":
        lines = [",".join(NAMES)] + [",".join(csv_field(v) for v in row) for row in data]
    else:
        lines = [
            "{" + ", ".join(f'"{n}": {json_value(v)}' for n, v in zip(NAMES, row, strict=True)) + "}"
            for row in data
        ]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def source(kind: str, path: Path, name: str = "src", **options: Any) -> Source:
    made = make_source(kind, name, {"path": str(path), "columns": COLUMNS, **options}, home=path.parent)
    made.open()
    return made


def run(
    src: Source,
    db: Path,
    *,
    mode: Mode = "append",
    batch_size: int = 2,
    should_stop: Callable[[], bool] = lambda: False,
) -> RunResult:
    sink = make_sink("sqlite", "dst", {"path": str(db)}, home=db.parent)
    sink.open()
    try:
        return run_pipeline(
            pipeline="files",
            run_key=f"r-{uuid.uuid4().hex[:8]}",  # every run has its own key
            source=src,
            sink=sink,
            read=ReadSpec(table="label-only", query=None, batch_size=batch_size),
            write=WriteSpec(table="loaded", mode=mode),
            on_progress=lambda read, written: None,
            should_stop=should_stop,
        )
    finally:
        sink.close()


def loaded(db: Path) -> list[Row]:
    reader = make_source("sqlite", "readback", {"path": str(db)}, home=db.parent)
    reader.open()
    try:
        spec = ReadSpec(table="loaded", query=None, batch_size=1000)
        return sorted(row for batch in reader.batches(spec, reader.schema(spec)) for row in batch.rows)
    finally:
        reader.close()


def read_all(src: Source, **spec: Any) -> list[Row]:
    read = ReadSpec(table=None, query=None, batch_size=spec.pop("batch_size", 100), **spec)
    return [row for batch in src.batches(read, src.schema(read)) for row in batch.rows]


def stop_after(batches: int) -> Callable[[], bool]:
    """A should_stop that lets ``batches`` batches be written, then cancels the run."""
    calls = iter(range(batches))
    return lambda: next(calls, None) is None


# --- folders and resuming ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_folder_loads_each_new_file_once_across_runs(tmp_path: Path, kind: str) -> None:
    folder, db = tmp_path / "in", tmp_path / "dst.db"
    folder.mkdir()
    write(kind, folder / f"a.{kind}", rows(1, 3))
    for ignored in (f".hidden.{kind}", f"c.{kind}.part", f"d.{kind}.tmp", "notes.txt"):
        write(kind, folder / ignored, rows(100, 1))
    src = source(kind, folder)
    assert src.resumes_across_runs

    assert run(src, db).rows_written == 3
    assert loaded(db) == rows(1, 3)

    write(kind, folder / f"b.{kind}", rows(4, 2))
    second = run(src, db)
    assert (second.rows_written, second.position) == (
        2,
        {"done": [f"a.{kind}", f"b.{kind}"], "file": None, "line": 0},
    )
    assert loaded(db) == rows(1, 5)

    assert run(src, db).rows_written == 0
    assert loaded(db) == rows(1, 5)


@pytest.mark.parametrize("kind", KINDS)
def test_replace_reloads_every_file_of_a_folder(tmp_path: Path, kind: str) -> None:
    folder, db = tmp_path / "in", tmp_path / "dst.db"
    folder.mkdir()
    write(kind, folder / f"a.{kind}", rows(1, 3))
    src = source(kind, folder)
    run(src, db, mode="replace")
    write(kind, folder / f"b.{kind}", rows(4, 1))
    assert run(src, db, mode="replace").rows_written == 4
    assert loaded(db) == rows(1, 4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("layout", "stop"), [("file", 1), ("file", 3), ("folder", 1), ("folder", 3), ("folder", 4), ("folder", 5)]
)
def test_a_run_killed_mid_file_resumes_without_gaps_or_duplicates(
    tmp_path: Path, kind: str, layout: str, stop: int
) -> None:
    folder, db = tmp_path / "in", tmp_path / "dst.db"
    folder.mkdir()
    if layout == "file":
        path = folder / f"only.{kind}"
        write(kind, path, rows(1, 9))
    else:
        path = folder
        write(kind, folder / f"a.{kind}", rows(1, 5))
        write(kind, folder / f"b.{kind}", rows(6, 4))
    src = source(kind, path)
    assert src.resumes_across_runs is (layout == "folder")

    with pytest.raises(CancelledError):
        run(src, db, should_stop=stop_after(stop))
    assert 0 < len(loaded(db)) <= 9

    result = run(src, db)
    assert result.resumed
    assert loaded(db) == rows(1, 9)


def test_a_single_file_starts_over_once_a_run_completed(tmp_path: Path) -> None:
    path, db = tmp_path / "only.csv", tmp_path / "dst.db"
    write("csv", path, rows(1, 3))
    src = source("csv", path)
    assert run(src, db).position == {"file": "only.csv", "line": 4}
    second = run(src, db)
    assert (second.resumed, second.rows_written) == (False, 3)
    assert loaded(db) == sorted(rows(1, 3) * 2)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "bad", "message"),
    [
        ("csv", "17,x,abc", "source sales: orders-2.csv line 17: column 'amount': 'abc' is not a decimal"),
        (
            "jsonl",
            '{"id": 17, "name": "x", "amount": "abc"}',
            "source sales: orders-2.jsonl line 17: column 'amount': \"abc\" is not a decimal",
        ),
    ],
)
def test_a_bad_value_names_the_file_line_and_column(
    tmp_path: Path, kind: str, bad: str, message: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write(kind, folder / f"orders-1.{kind}", rows(1, 3))
    write(kind, folder / f"orders-2.{kind}", rows(1, 15 if kind == "csv" else 16))
    with (folder / f"orders-2.{kind}").open("a", encoding="utf-8") as handle:
        handle.write(bad + "\n")
    with pytest.raises(MovementError, match=f"^{re.escape(message)}$"):
        run(source(kind, folder, name="sales"), tmp_path / "dst.db")
    assert loaded(tmp_path / "dst.db") == sorted(rows(1, 3) + rows(1, 14 if kind == "csv" else 16))


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("integer", "3000000000", "is out of range for integer"),
        ("timestamp", "2024-01-01T00:00:00+02:00", "has a UTC offset"),
        ("boolean", "maybe", "is not a boolean"),
        ("bytes", "not base64!", "is not base64 bytes"),
        ("json", "{oops", "is not JSON"),
    ],
)
def test_values_that_do_not_fit_say_why(tmp_path: Path, kind: str, value: str, reason: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(f"a\n{value}\n", encoding="utf-8")
    src = make_source("csv", "s", {"path": str(path), "columns": {"a": kind}}, home=tmp_path)
    src.open()
    with pytest.raises(MovementError, match=re.escape(f"x.csv line 2: column 'a': {value!r} {reason}")):
        read_all(src)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_column_type_is_named(tmp_path: Path, kind: str) -> None:
    src = make_source(kind, "s", {"path": str(tmp_path), "columns": {"amount": "money"}}, home=tmp_path)
    with pytest.raises(MovementError, match="source s: column 'amount' has unknown type 'money'"):
        src.open()


@pytest.mark.parametrize("kind", KINDS)
def test_files_take_no_query_and_a_single_file_no_cursor(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"x.{kind}"
    write(kind, path, rows(1, 1))
    src = source(kind, path)
    with pytest.raises(MovementError, match="file sources take no query"):
        src.schema(ReadSpec(table=None, query="SELECT 1", batch_size=10))
    with pytest.raises(MovementError, match="a single file has no cursor order"):
        src.schema(ReadSpec(table=None, query=None, batch_size=10, cursor_column="id"))
    folder = source(kind, tmp_path)
    assert folder.schema(ReadSpec(table=None, query=None, batch_size=10, cursor_column="id")).names == NAMES


def test_a_missing_path_is_reported(tmp_path: Path) -> None:
    src = make_source("csv", "s", {"path": "nowhere/x.csv"}, home=tmp_path)
    with pytest.raises(
        MovementError, match=re.escape(f"source s: {tmp_path / 'nowhere/x.csv'} does not exist")
    ):
        src.open()


# --- CSV -----------------------------------------------------------------------------------


def test_csv_tells_null_from_empty_text_and_empty_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b'id,label,blob,n\r\n1,,,\r\n2,"","",\r\n3,"a\r\nb",AAH/,""\r\n')
    columns = {"id": "integer", "label": "text", "blob": "bytes", "n": "integer"}
    src = make_source("csv", "s", {"path": str(path), "columns": columns}, home=tmp_path)
    src.open()
    assert read_all(src) == [(1, None, None, None), (2, "", b"", None), (3, "a\r\nb", b"\x00\x01\xff", None)]


def test_csv_header_names_pick_the_columns_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("\ufeffb,a,extra\n2,1,z\n\n4,3,z\n", encoding="utf-8")
    src = make_source(
        "csv", "s", {"path": str(path), "columns": {"a": "integer", "b": "text"}}, home=tmp_path
    )
    src.open()
    assert read_all(src) == [(1, "2"), (3, "4")]
    inferred = make_source("csv", "s", {"path": str(path)}, home=tmp_path)
    inferred.open()
    spec = ReadSpec(table=None, query=None, batch_size=10)
    assert inferred.schema(spec) == Schema(
        (Column("b", T.TEXT), Column("a", T.TEXT), Column("extra", T.TEXT))
    )


def test_csv_without_header_with_its_own_delimiter_and_null_marker(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    path.write_text('1\t\\N\t\t2024-02-29T10:00:00Z\tyes\n2\t"\\N"\tx\t2024-02-29T12:00:00+02:00\tF\n')
    options = {
        "path": str(path),
        "header": False,
        "delimiter": "\t",
        "null": "\\N",
        "columns": {"id": "bigint", "a": "text", "b": "text", "at": "timestamptz", "ok": "boolean"},
    }
    src = make_source("csv", "s", options, home=tmp_path)
    src.open()
    at = datetime(2024, 2, 29, 10, tzinfo=UTC)
    assert read_all(src) == [(1, None, "", at, True), (2, "\\N", "x", at, False)]
    without_columns = make_source("csv", "s", {**options, "columns": None}, home=tmp_path)
    with pytest.raises(MovementError, match="without a header needs the 'columns' option"):
        without_columns.open()


def test_csv_line_numbers_count_lines_inside_quoted_fields(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text('a,b\n1,"one\ntwo\nthree"\nx,y\n', encoding="utf-8")
    src = make_source(
        "csv", "s", {"path": str(path), "columns": {"a": "integer", "b": "text"}}, home=tmp_path
    )
    src.open()
    with pytest.raises(MovementError, match=re.escape("x.csv line 5: column 'a': 'x' is not an integer")):
        read_all(src)


@pytest.mark.parametrize("kind", KINDS)
def test_text_that_is_not_utf8_names_its_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"x.{kind}"
    write(kind, path, rows(1, 2))
    with path.open("ab") as handle:
        handle.write(b"3,caf\xe9,1\n" if kind == "csv" else b'{"id": 3, "name": "caf\xe9"}\n')
    with pytest.raises(
        MovementError, match=f"source src: x.{kind} line {4 if kind == 'csv' else 3}: not valid UTF-8"
    ):
        read_all(source(kind, path))


def test_csv_rows_with_the_wrong_field_count_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n3\n", encoding="utf-8")
    src = make_source("csv", "s", {"path": str(path)}, home=tmp_path)
    src.open()
    with pytest.raises(MovementError, match="x.csv line 3: expected 2 fields, found 1"):
        read_all(src)


# --- JSON lines ----------------------------------------------------------------------------


def test_jsonl_infers_types_from_the_first_record_and_keeps_decimals_exact(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"id": 1, "ratio": 0.5, "ok": true, "name": "a", "doc": {"k": [1.5]}, "gone": null}\n'
        "\n"
        '{"id": 2, "ratio": -1.25e-10, "doc": "just a string", "extra": 1}\n',
        encoding="utf-8",
    )
    src = make_source("jsonl", "s", {"path": str(path)}, home=tmp_path)
    src.open()
    spec = ReadSpec(table=None, query=None, batch_size=10)
    assert [(c.name, c.type) for c in src.schema(spec).columns] == [
        ("id", T.BIGINT),
        ("ratio", T.FLOAT),
        ("ok", T.BOOLEAN),
        ("name", T.TEXT),
        ("doc", T.JSON),
        ("gone", T.TEXT),
    ]
    assert read_all(src) == [
        (1, 0.5, True, "a", {"k": [1.5]}, None),
        (2, -1.25e-10, None, None, "just a string", None),
    ]
    exact = make_source("jsonl", "s", {"path": str(path), "columns": {"ratio": "decimal"}}, home=tmp_path)
    exact.open()
    assert read_all(exact) == [(Decimal("0.5"),), (Decimal("-1.25e-10"),)]


@pytest.mark.parametrize(
    ("line", "message"), [("[1, 2]", "expected a JSON object, found list"), ("{oops", "not valid JSON")]
)
def test_jsonl_lines_that_are_not_objects_are_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n' + line + "\n", encoding="utf-8")
    src = make_source("jsonl", "s", {"path": str(path), "columns": {"a": "integer"}}, home=tmp_path)
    src.open()
    with pytest.raises(MovementError, match=re.escape(f"source s: x.jsonl line 2: {message}")):
        read_all(src)


# --- streaming -----------------------------------------------------------------------------


class CountingFile:
    """A file that counts the lines read from it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.lines = 0

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def fileno(self) -> int:
        return self.handle.fileno()

    def close(self) -> None:
        self.handle.close()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = next(self.handle)
        self.lines += 1
        return line


@pytest.mark.parametrize("kind", KINDS)
def test_rows_stream_in_batches_without_reading_the_whole_file(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 200_000
    path = tmp_path / f"big.{kind}"
    with path.open("w", encoding="utf-8") as handle:
        if kind == "csv":
            handle.write("id,name,amount\n")
            handle.writelines(f"{i},name {i},{i}.25\n" for i in range(total))
        else:
            handle.writelines(f'{{"id": {i}, "name": "name {i}", "amount": {i}.25}}\n' for i in range(total))
    opened: list[CountingFile] = []

    def counting_open(target: Path) -> CountingFile:
        opened.append(CountingFile(target.open("rb")))
        return opened[-1]

    monkeypatch.setattr(files, "open_file", counting_open)
    src = source(kind, path)
    spec = ReadSpec(table=None, query=None, batch_size=1000)
    batches = src.batches(spec, src.schema(spec))

    first = next(batches)
    assert len(first.rows) == 1000
    assert opened[-1].lines <= 1001  # the first batch came before the rest of the file was read

    tracemalloc.start()
    try:
        count = len(first.rows) + sum(len(batch.rows) for batch in batches)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == total
    assert opened[-1].lines == total + (kind == "csv")
    assert peak < path.stat().st_size / 4, (
        f"peak {peak} bytes while reading a {path.stat().st_size}-byte file"
    )


def test_positions_are_json(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write("csv", folder / "a.csv", rows(1, 3))
    src = source("csv", folder)
    spec = ReadSpec(table=None, query=None, batch_size=2)
    positions = [json.loads(json.dumps(b.position)) for b in src.batches(spec, src.schema(spec))]
    assert positions == [
        {"done": [], "file": "a.csv", "line": 3},
        {"done": ["a.csv"], "file": None, "line": 0},
    ]
