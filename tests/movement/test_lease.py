"""A run holds its pipeline's destination: a second run of the same pipeline cannot write beside it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.movement.harness import SINK_KINDS, load_harness
from workers.movement.engine import run_pipeline
from workers.movement.errors import RetryableError
from workers.movement.interface import ReadSpec, Sink, WriteSpec
from workers.movement.registry import make_sink, make_source

ROOT = Path(__file__).resolve().parents[2]


def opened(kind: str, options: dict[str, object], home: Path) -> Sink:
    sink = make_sink(kind, "dst", options, home=home)
    sink.open()
    return sink


@pytest.mark.parametrize("kind", SINK_KINDS)
def test_one_run_at_a_time_holds_a_pipelines_destination(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    harness = load_harness(kind, tmp_path / "dst")
    request.addfinalizer(harness.cleanup)
    pipeline = f"orders-{uuid.uuid4().hex[:8]}"
    first = opened(kind, harness.options(), tmp_path)
    second = opened(kind, harness.options(), tmp_path)
    try:
        first.lease(pipeline)
        with pytest.raises(
            RetryableError, match=f"^destination dst: another run of pipeline {pipeline} is writing"
        ):
            second.lease(pipeline)
        second.lease(pipeline + "-other")  # another pipeline's lease is its own
        first.close()
        second.close()
        third = opened(kind, harness.options(), tmp_path)
        third.lease(pipeline)  # let go with the first connection
        third.close()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("kind", SINK_KINDS)
def test_a_killed_holder_lets_go(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    harness = load_harness(kind, tmp_path / "dst")
    request.addfinalizer(harness.cleanup)
    pipeline = f"orders-{uuid.uuid4().hex[:8]}"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from workers.movement.registry import make_sink
                sink = make_sink({kind!r}, "dst", {harness.options()!r}, home=Path({str(tmp_path)!r}))
                sink.open()
                sink.lease({pipeline!r})
                print("held", flush=True)
                time.sleep(60)
                """
            ),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        sink = opened(kind, harness.options(), tmp_path)
        try:
            with pytest.raises(RetryableError):
                sink.lease(pipeline)
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            for _ in range(50):  # the server notices the closed connection within moments
                try:
                    sink.lease(pipeline)
                    break
                except RetryableError:
                    time.sleep(0.1)
            else:
                pytest.fail("the lease of a killed holder was never let go")
        finally:
            sink.close()
    finally:
        holder.kill()
        holder.wait(10)


def source_table(tmp_path: Path) -> Path:
    source_db = tmp_path / "src.db"
    with closing(sqlite3.connect(source_db)) as conn, conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(10)])
    return source_db


def run_once(
    tmp_path: Path, source_db: Path, *, lease_wait: float, on_progress: Callable[[int, int], None]
) -> None:
    source = make_source("sqlite", "src", {"path": str(source_db)}, home=tmp_path)
    sink = make_sink("sqlite", "dst", {"path": str(tmp_path / "dst.db")}, home=tmp_path)
    source.open()
    sink.open()
    try:
        run_pipeline(
            pipeline="p",
            run_key=uuid.uuid4().hex,
            source=source,
            sink=sink,
            read=ReadSpec(table="t", query=None, batch_size=3),
            write=WriteSpec(table="t", mode="append"),
            on_progress=on_progress,
            should_stop=lambda: False,
            lease_wait=lease_wait,
        )
    finally:
        source.close()
        sink.close()


def loaded(tmp_path: Path) -> int:
    with closing(sqlite3.connect(tmp_path / "dst.db")) as conn:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def test_a_second_run_waits_for_the_first_to_let_go_then_fails_retryably(tmp_path: Path) -> None:
    source_db = source_table(tmp_path)
    refused: list[float] = []

    def second(read: int, written: int) -> None:  # while the first run is between two batches
        if read == 3:
            started = time.monotonic()
            with pytest.raises(RetryableError, match="another run of pipeline p is writing"):
                run_once(tmp_path, source_db, lease_wait=0.5, on_progress=lambda r, w: None)
            refused.append(time.monotonic() - started)

    run_once(tmp_path, source_db, lease_wait=0.5, on_progress=second)
    assert len(refused) == 1 and refused[0] >= 0.5  # it waited before giving up
    assert loaded(tmp_path) == 10


def test_a_second_run_that_waits_goes_ahead_once_the_first_ends(tmp_path: Path) -> None:
    source_db = source_table(tmp_path)
    first_writing, first_may_go = threading.Event(), threading.Event()
    second_done: list[str] = []

    def hold(read: int, written: int) -> None:
        first_writing.set()
        first_may_go.wait(10)

    def second() -> None:
        run_once(tmp_path, source_db, lease_wait=30, on_progress=lambda r, w: None)
        second_done.append("done")

    first = threading.Thread(
        target=run_once, args=(tmp_path, source_db), kwargs={"lease_wait": 0, "on_progress": hold}
    )
    first.start()
    assert first_writing.wait(10)
    waiting = threading.Thread(target=second)
    waiting.start()
    time.sleep(0.5)
    assert not second_done  # still waiting for the lease
    first_may_go.set()
    first.join(10)
    waiting.join(10)
    assert second_done == ["done"]
    assert loaded(tmp_path) == 20  # two append runs, one after the other, each loaded every row
