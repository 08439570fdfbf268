"""Every source/destination pair carries every logical type, and NULL in each, unchanged."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.movement.harness import CONTRACT_COLUMNS, CONTRACT_ROWS, SINK_KINDS, SOURCE_KINDS, load_harness
from workers.movement.engine import run_pipeline
from workers.movement.interface import ReadSpec, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import Row

PAIRS = [(s, d) for s in SOURCE_KINDS for d in SINK_KINDS]


def read_back(kind: str, options: dict[str, object], table: str, home: Path) -> list[Row]:
    source = make_source(kind, "readback", options, home=home)
    source.open()
    try:
        spec = ReadSpec(table=table, query=None, batch_size=1000)
        schema = source.schema(spec)
        rows = [row for batch in source.batches(spec, schema) for row in batch.rows]
    finally:
        source.close()
    return sorted(rows, key=lambda r: r[0])


@pytest.mark.parametrize(("source_kind", "sink_kind"), PAIRS, ids=[f"{s}-to-{d}" for s, d in PAIRS])
def test_every_type_round_trips_between_each_source_and_destination(
    tmp_path: Path, source_kind: str, sink_kind: str, request: pytest.FixtureRequest
) -> None:
    source_harness = load_harness(source_kind, tmp_path / "src")
    # cleaned up even when the second harness skips (its server is not there)
    request.addfinalizer(source_harness.cleanup)
    sink_harness = load_harness(sink_kind, tmp_path / "dst")
    request.addfinalizer(sink_harness.cleanup)
    suffix = uuid.uuid4().hex[:8]
    table = source_harness.create_table(
        f"contract_src_{suffix}", CONTRACT_COLUMNS, CONTRACT_ROWS, primary_key=["id"]
    )
    source = make_source(source_kind, "src", source_harness.options(), home=tmp_path)
    sink = make_sink(sink_kind, "dst", sink_harness.options(), home=tmp_path)
    source.open()
    sink.open()
    try:
        result = run_pipeline(
            pipeline=f"contract-{suffix}",
            run_key="r1",
            source=source,
            sink=sink,
            read=ReadSpec(table=table, query=None, batch_size=2),
            write=WriteSpec(table=f"contract_dst_{suffix}", mode="replace"),
            on_progress=lambda read, written: None,
            should_stop=lambda: False,
        )
    finally:
        source.close()
        sink.close()
    assert result.rows_written == len(CONTRACT_ROWS)
    assert read_back(sink_kind, sink_harness.options(), f"contract_dst_{suffix}", tmp_path) == CONTRACT_ROWS
