"""The movement engine with the SQLite connector: batches, atomic replace, append, clear failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cp.protocol import ConnectorSpec, PipelineSpec
from workers.movement.engine import Progress, run_pipeline
from workers.movement.engine import RunResult as CopyResult
from workers.movement.errors import MovementError as JobError
from workers.movement.interface import ReadSpec, WriteSpec
from workers.movement.registry import make_sink, make_source


def copy_pipeline(
    spec: PipelineSpec, *, home: Path, on_progress: Progress, should_stop: Callable[[], bool]
) -> CopyResult:
    source = make_source(spec.source.kind, spec.source.name, spec.source.options, home=home)
    sink = make_sink(spec.destination.kind, spec.destination.name, spec.destination.options, home=home)
    with source, sink:
        return run_pipeline(
            pipeline=spec.name,
            run_key="r1",
            source=source,
            sink=sink,
            read=ReadSpec(table=spec.source_table, query=spec.source_query, batch_size=spec.batch_size),
            write=WriteSpec(table=spec.destination_table, mode=spec.mode),
            on_progress=on_progress,
            should_stop=should_stop,
        )


ROWS = [(1, "apple", 0.5), (2, "pear", 0.75), (3, "plum", 0.2), (4, "fig", 1.1), (5, "kiwi", 0.3)]
OLD_ROWS = [(100, "old", 9.0), (101, "older", 9.5)]


def write_table(path: Path, table: str, rows: list[tuple[Any, ...]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)')
        conn.executemany(f'INSERT INTO "{table}" VALUES (?, ?, ?)', rows)
    conn.close()


def read_table(path: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY id').fetchall()
    finally:
        conn.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A daemon home with shop.db holding a 5-row ``products`` table."""
    write_table(tmp_path / "shop.db", "products", ROWS)
    return tmp_path


@pytest.fixture
def spec() -> Callable[..., PipelineSpec]:
    def spec(**overrides: Any) -> PipelineSpec:
        fields: dict[str, Any] = {
            "name": "products",
            "source": ConnectorSpec(name="shop", kind="sqlite", options={"path": "shop.db"}),
            "source_table": "products",
            "destination": ConnectorSpec(
                name="warehouse", kind="sqlite", options={"path": "out/warehouse.db"}
            ),
            "destination_table": "products",
            "mode": "replace",
            "batch_size": 2,
        }
        return PipelineSpec(**{**fields, **overrides})

    return spec


@pytest.fixture
def progress() -> list[tuple[int, int]]:
    return []


def run(
    spec: PipelineSpec, home: Path, progress: list[tuple[int, int]], *, stop_after: int | None = None
) -> CopyResult:
    checks: Iterator[int] = iter(range(10_000))

    def should_stop() -> bool:
        return stop_after is not None and next(checks) >= stop_after

    return copy_pipeline(
        spec, home=home, on_progress=lambda r, w: progress.append((r, w)), should_stop=should_stop
    )


def test_replace_copies_every_row_in_batches(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    result = run(spec(), home, progress)

    assert (result.rows_read, result.rows_written) == (5, 5)
    assert read_table(home / "out" / "warehouse.db", "products") == ROWS
    assert progress == [(2, 2), (4, 4), (5, 5)]


def test_replace_swaps_out_the_old_destination_table(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    (home / "out").mkdir()
    write_table(home / "out" / "warehouse.db", "products", OLD_ROWS)

    run(spec(), home, progress)

    assert read_table(home / "out" / "warehouse.db", "products") == ROWS


def test_replace_declares_the_mapped_logical_types(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    run(spec(), home, progress)

    with sqlite3.connect(home / "out" / "warehouse.db") as conn:
        types = [(row[1], row[2]) for row in conn.execute('PRAGMA table_info("products")')]
    conn.close()
    # SQLite's INTEGER is 64-bit, so it maps to bigint; REAL is a float, declared DOUBLE
    assert types == [("id", "BIGINT"), ("name", "TEXT"), ("price", "DOUBLE")]


def test_a_replace_stopped_after_the_first_batch_leaves_the_old_table_untouched(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    (home / "out").mkdir()
    write_table(home / "out" / "warehouse.db", "products", OLD_ROWS)

    with pytest.raises(JobError, match="cancelled between batches"):
        run(spec(), home, progress, stop_after=1)

    assert progress == [(2, 2)]
    assert read_table(home / "out" / "warehouse.db", "products") == OLD_ROWS


def test_append_adds_rows_to_the_existing_table(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    (home / "out").mkdir()
    write_table(home / "out" / "warehouse.db", "products", OLD_ROWS)

    result = run(spec(mode="append"), home, progress)

    assert result.rows_written == 5
    assert read_table(home / "out" / "warehouse.db", "products") == ROWS + OLD_ROWS


def test_append_creates_a_missing_destination_table(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    run(spec(mode="append"), home, progress)

    assert read_table(home / "out" / "warehouse.db", "products") == ROWS


def test_a_source_query_copies_only_its_result(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    query = "SELECT id, name FROM products WHERE price < 0.6"

    result = run(spec(source_table=None, source_query=query), home, progress)

    assert result.rows_read == 3
    assert read_table(home / "out" / "warehouse.db", "products") == [(1, "apple"), (3, "plum"), (5, "kiwi")]


def test_a_missing_source_table_is_a_job_error_naming_the_source_connector(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    with pytest.raises(JobError) as caught:
        run(spec(source_table="customers"), home, progress)

    assert str(caught.value) == "source shop: no such table: customers"


def test_a_missing_source_file_is_a_job_error_naming_the_source_connector(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    source = ConnectorSpec(name="shop", kind="sqlite", options={"path": "nowhere.db"})

    with pytest.raises(JobError) as caught:
        run(spec(source=source), home, progress)

    assert str(caught.value) == f"source shop: database file {home / 'nowhere.db'} does not exist"
    assert not (home / "nowhere.db").exists()


def test_an_unknown_connector_kind_is_a_job_error_naming_the_kind(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    destination = ConnectorSpec(name="lake", kind="oracle", options={})

    with pytest.raises(JobError, match="^unknown connector kind 'oracle'$"):
        run(spec(destination=destination), home, progress)


def test_a_secret_reference_in_a_path_is_resolved_at_run_time(
    home: Path,
    spec: Callable[..., PipelineSpec],
    progress: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WAREHOUSE_DB", str(home / "secret-place.db"))
    destination = ConnectorSpec(name="warehouse", kind="sqlite", options={"path": "${env:WAREHOUSE_DB}"})

    run(spec(destination=destination), home, progress)

    assert read_table(home / "secret-place.db", "products") == ROWS


def test_a_source_whose_path_contains_a_hash_is_read_from_that_file(
    home: Path, spec: Callable[..., PipelineSpec], progress: list[tuple[int, int]]
) -> None:
    (home / "shop#2").mkdir()
    write_table(home / "shop#2" / "shop.db", "products", ROWS)
    source = ConnectorSpec(name="shop", kind="sqlite", options={"path": "shop#2/shop.db"})

    run(spec(source=source), home, progress)

    assert read_table(home / "out" / "warehouse.db", "products") == ROWS
