"""Confinement inside the connectors and through a whole job: what SQLite and the file sources
create or open beside the path they were given stays there, and a job the daemon's confinement
refuses fails before it touches anything."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cp.protocol import ConnectorSpec, PipelineSpec, RunJob
from tests.movement.harness_postgres import Harness as PostgresHarness
from tests.movement.test_file_sources import source, write
from workers.confinement.hosts import HostRules
from workers.confinement.paths import PathGuard
from workers.confinement.policy import Confinement
from workers.jobs import Outcome, Report, execute
from workers.movement.errors import MovementError
from workers.movement.interface import PipelineState, ReadSpec, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import Column, LogicalType, Schema

SCHEMA = Schema((Column("id", LogicalType.BIGINT),))


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def make_db(path: Path, rows: int = 3) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1, rows + 1)])


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_sqlite_destination_whose_journal_is_a_link_is_not_opened(
    places: tuple[Path, Path], suffix: str
) -> None:
    root, outside = places
    (root / f"wh.db{suffix}").symlink_to(outside / "planted")
    sink = make_sink("sqlite", "wh", {"path": str(root / "wh.db")}, home=root)
    with pytest.raises(MovementError, match=f"wh.db{suffix} is a symbolic link; SQLite would follow it"):
        sink.open()
    sink.close()
    assert list(outside.iterdir()) == [] and not (root / "wh.db").exists()


def test_a_sqlite_source_whose_wal_is_a_link_is_not_opened(places: tuple[Path, Path]) -> None:
    root, outside = places
    make_db(root / "shop.db")
    (root / "shop.db-wal").symlink_to(outside / "planted")
    src = make_source("sqlite", "shop", {"path": str(root / "shop.db")}, home=root)
    with pytest.raises(MovementError, match="shop.db-wal is a symbolic link"):
        src.open()
    assert list(outside.iterdir()) == []


def test_the_lease_lock_file_is_never_created_through_a_link(places: tuple[Path, Path]) -> None:
    root, outside = places
    sink = make_sink("sqlite", "wh", {"path": str(root / "wh.db")}, home=root)
    sink.open()
    try:
        sink.lease("p")  # once, to learn the lock file's name
        sink.close()
        (lock,) = root.glob(".wh.db.*.lock")
        lock.unlink()
        lock.symlink_to(outside / "planted.lock")
        sink.open()
        with pytest.raises(
            MovementError, match="cannot open lock file .*: Too many levels of symbolic links"
        ):
            sink.lease("p")
    finally:
        sink.close()
    assert list(outside.iterdir()) == []


def test_a_sqlite_connection_cannot_attach_another_file(places: tuple[Path, Path]) -> None:
    root, outside = places
    make_db(root / "shop.db")
    for role, connector in (
        ("source", make_source("sqlite", "shop", {"path": str(root / "shop.db")}, home=root)),
        ("destination", make_sink("sqlite", "wh", {"path": str(root / "wh.db")}, home=root)),
    ):
        connector.open()
        try:
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                connector.conn.execute(f"ATTACH DATABASE '{outside / role}.db' AS other")  # type: ignore[attr-defined]
        finally:
            connector.close()
    assert list(outside.iterdir()) == []


def test_a_sqlite_destination_still_writes_inside_its_root(places: tuple[Path, Path]) -> None:
    root, _ = places
    sink = make_sink("sqlite", "wh", {"path": str(root / "wh.db")}, home=root)
    sink.open()
    try:
        sink.lease("p")
        table = sink.prepare(WriteSpec(table="t", mode="append"), SCHEMA)
        state = PipelineState(pipeline="p", run_key="r", complete=True, position=None, rows_loaded=1)
        sink.write(table, WriteSpec(table="t", mode="append"), SCHEMA, [(1,)], state)
    finally:
        sink.close()
    with sqlite3.connect(root / "wh.db") as conn:
        assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_link_in_a_folder_source_that_leads_out_of_the_folder_is_not_read(
    places: tuple[Path, Path], kind: str
) -> None:
    root, outside = places
    folder = root / "in"
    folder.mkdir()
    write(kind, folder / f"a.{kind}", [(1, "one", 1)])
    write(kind, outside / f"secret.{kind}", [(99, "secret", 9)])
    (folder / f"b.{kind}").symlink_to(outside / f"secret.{kind}")
    src = source(kind, folder)
    spec = ReadSpec(table=None, query=None, batch_size=10)
    with pytest.raises(MovementError) as refused:
        list(src.batches(spec, src.schema(spec)))
    assert f"b.{kind} leads to {outside}/secret.{kind}, outside {folder}; not read" in str(refused.value)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_link_in_a_folder_source_to_a_file_of_the_same_folder_is_read(
    places: tuple[Path, Path], kind: str
) -> None:
    root, _ = places
    folder = root / "in"
    (folder / "archive").mkdir(parents=True)
    write(kind, folder / "archive" / f"2024.{kind}", [(1, "one", 1)])
    (folder / f"latest.{kind}").symlink_to(folder / "archive" / f"2024.{kind}")
    src = source(kind, folder)
    spec = ReadSpec(table=None, query=None, batch_size=10)
    assert [r[0] for batch in src.batches(spec, src.schema(spec)) for r in batch.rows] == [1]


# --- a whole job on a confined daemon -----------------------------------------------------------


def job(source: ConnectorSpec, destination: ConnectorSpec) -> RunJob:
    return RunJob(
        run_key="p@1",
        attempt=1,
        pipeline=PipelineSpec(
            name="p", source=source, source_table="t", destination=destination, destination_table="t"
        ),
    )


def run(job: RunJob, confinement: Confinement, home: Path) -> tuple[Outcome, list[Outcome]]:
    sent: list[Outcome] = []
    outcome = execute(
        job, home=home, confinement=confinement, report=Report(sent.append), should_stop=lambda: False
    )
    return outcome, sent


def test_a_job_writing_outside_the_roots_fails_for_good_and_creates_nothing(
    places: tuple[Path, Path],
) -> None:
    root, outside = places
    make_db(root / "shop.db")
    escape = job(
        ConnectorSpec(name="shop", kind="sqlite", options={"path": str(root / "shop.db")}),
        ConnectorSpec(name="wh", kind="sqlite", options={"path": str(outside / "new" / "wh.db")}),
    )
    outcome, _ = run(escape, Confinement(paths=PathGuard((root,))), root)
    assert (outcome.state, outcome.retryable) == ("failed", False)
    assert outcome.error == (
        f"pipeline p: destination wh: option 'path': path {outside}/new/wh.db is outside the allowed roots"
        f" ({root}); MYCELIAL_ALLOWED_ROOTS or --allow-root adds roots"
    )
    assert list(outside.iterdir()) == []


def test_a_job_through_a_link_out_of_the_root_fails_and_creates_nothing(places: tuple[Path, Path]) -> None:
    root, outside = places
    make_db(root / "shop.db")
    (root / "link").symlink_to(outside)
    escape = job(
        ConnectorSpec(name="shop", kind="sqlite", options={"path": str(root / "shop.db")}),
        ConnectorSpec(name="wh", kind="sqlite", options={"path": str(root / "link" / "wh.db")}),
    )
    outcome, _ = run(escape, Confinement(paths=PathGuard((root,))), root)
    assert outcome.state == "failed"
    assert f"path {root}/link/wh.db resolves to {outside}/wh.db, which is outside" in str(outcome.error)
    assert list(outside.iterdir()) == []


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[PostgresHarness]:
    harness = PostgresHarness(tmp_path)
    yield harness
    harness.cleanup()


def test_a_database_host_the_daemon_does_not_allow_is_never_connected_to(
    places: tuple[Path, Path], pg: PostgresHarness
) -> None:
    root, _ = places
    pg.create_table("t", list(SCHEMA.columns), [(1,), (2,)], primary_key=["id"])
    copy = job(
        ConnectorSpec(name="pg", kind="postgres", options=pg.options()),
        ConnectorSpec(name="wh", kind="sqlite", options={"path": str(root / "wh.db")}),
    )
    elsewhere = HostRules.parse("db.internal, 10.0.0.0/8", what="S")
    outcome, _ = run(copy, Confinement(paths=PathGuard((root,)), hosts=elsewhere), root)
    assert (outcome.state, outcome.retryable) == ("failed", False)
    assert (
        "source pg: host 127.0.0.1 is not allowed on this daemon (allowed: db.internal, 10.0.0.0/8;"
        in str(outcome.error)
    )
    assert not (root / "wh.db").exists()

    here = HostRules.parse("127.0.0.0/8", what="S")
    outcome, _ = run(copy, Confinement(paths=PathGuard((root,)), hosts=here), root)
    assert (outcome.state, outcome.rows_written) == ("succeeded", 2)


def test_a_kind_the_daemon_does_not_allow_is_never_opened(places: tuple[Path, Path]) -> None:
    root, _ = places
    make_db(root / "shop.db")
    copy = job(
        ConnectorSpec(name="shop", kind="sqlite", options={"path": str(root / "shop.db")}),
        ConnectorSpec(name="wh", kind="sqlite", options={"path": str(root / "wh.db")}),
    )
    outcome, _ = run(copy, Confinement(paths=PathGuard((root,)), kinds=frozenset({"postgres"})), root)
    assert outcome.state == "failed"
    assert "source shop: connector kind 'sqlite' is not allowed on this daemon" in str(outcome.error)
    assert not (root / "wh.db").exists()
