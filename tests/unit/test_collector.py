"""The collector's thresholds are raised while any run moves rows, and put back by the last one."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.movement.collector import BULK_THRESHOLDS, rare_collections
from workers.movement.engine import run_pipeline
from workers.movement.interface import PipelineState, ReadSpec, Sink, Source, SourceBatch, WriteSpec
from workers.movement.types import Column, LogicalType, Row, Schema


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


def test_thresholds_are_raised_during_a_run_and_restored_after_it_even_when_it_fails() -> None:
    with pytest.raises(RuntimeError), rare_collections():
        assert gc.get_threshold() == BULK_THRESHOLDS
        raise RuntimeError("the run failed")
    assert gc.get_threshold() == (700, 10, 10)


def test_overlapping_runs_restore_only_when_the_last_one_ends() -> None:
    first_in, second_done, first_may_end = threading.Event(), threading.Event(), threading.Event()
    seen: list[tuple[int, int, int]] = []

    def first() -> None:
        with rare_collections():
            first_in.set()
            first_may_end.wait(5)
            seen.append(gc.get_threshold())

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with rare_collections():
        pass
    second_done.set()
    assert gc.get_threshold() == BULK_THRESHOLDS  # the first run is still going
    first_may_end.set()
    thread.join(5)
    assert seen == [BULK_THRESHOLDS]
    assert gc.get_threshold() == (700, 10, 10)


def test_higher_thresholds_set_by_the_application_are_kept() -> None:
    gc.set_threshold(1_000_000, 5, 50)
    with rare_collections():
        assert gc.get_threshold() == (1_000_000, 20, 50)
    assert gc.get_threshold() == (1_000_000, 5, 50)


def test_the_engine_moves_rows_with_rare_collections(tmp_path: Path) -> None:
    seen: list[tuple[int, int, int]] = []

    class Rows(Source):
        kind = "rows"

        def open(self) -> None: ...

        def close(self) -> None: ...

        def schema(self, spec: ReadSpec) -> Schema:
            return Schema((Column("id", LogicalType.BIGINT),))

        def batches(self, spec: ReadSpec, schema: Schema) -> Iterator[SourceBatch]:
            yield SourceBatch([(1,), (2,)], {"offset": 2})

    class Thresholds(Sink):
        kind = "thresholds"

        def open(self) -> None: ...

        def close(self) -> None: ...

        def lease(self, pipeline: str) -> None: ...

        def load_state(self, pipeline: str) -> PipelineState | None:
            return None

        def prepare(self, spec: WriteSpec, schema: Schema) -> str:
            return spec.table

        def write(
            self, table: str, spec: WriteSpec, schema: Schema, rows: list[Row], state: PipelineState
        ) -> None:
            seen.append(gc.get_threshold())

        def finish(self, table: str, spec: WriteSpec, state: PipelineState) -> None: ...

    run_pipeline(
        pipeline="p",
        run_key="r",
        source=Rows("src", {}, home=tmp_path),
        sink=Thresholds("dst", {}, home=tmp_path),
        read=ReadSpec(table="t", query=None, batch_size=2),
        write=WriteSpec(table="t", mode="append"),
        on_progress=lambda read, written: None,
        should_stop=lambda: False,
    )
    assert seen == [BULK_THRESHOLDS]
    assert gc.get_threshold() == (700, 10, 10)
