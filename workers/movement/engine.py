"""Run one pipeline: read batches from a source and commit each, with its position, to the sink."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from workers.movement.collector import rare_collections
from workers.movement.deadline import NO_DEADLINE, Deadline
from workers.movement.errors import CancelledError, LeaseHeldError, MovementError
from workers.movement.interface import Mode, PipelineState, Position, ReadSpec, Sink, Source, WriteSpec
from workers.movement.types import Schema

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
LEASE_WAIT = 60.0  # seconds a run waits for another run of its pipeline to let go of the destination
LEASE_POLL = 0.2


@dataclass(frozen=True)
class RunResult:
    rows_read: int
    rows_written: int
    position: Position | None
    resumed: bool


def start_position(state: PipelineState | None, *, mode: Mode, source: Source) -> Position | None:
    """Where this run starts reading.

    Incremental reads and folder sources continue from the committed position of any earlier run;
    append and upsert continue only an unfinished (killed) run; replace always starts over.
    """
    if state is None or mode == "replace":
        return None
    if mode == "incremental" or source.resumes_across_runs:
        return state.position
    return None if state.complete else state.position


def run_pipeline(
    *,
    pipeline: str,
    run_key: str,
    source: Source,
    sink: Sink,
    read: ReadSpec,
    write: WriteSpec,
    on_progress: Progress,
    should_stop: Callable[[], bool],
    lease_wait: float = LEASE_WAIT,
    deadline: Deadline = NO_DEADLINE,
) -> RunResult:
    """Copy the source into the sink; nothing is committed once ``deadline`` has passed."""
    _take_lease(sink, pipeline, wait=lease_wait, should_stop=should_stop, deadline=deadline)
    previous = sink.load_state(pipeline)
    if previous is not None and previous.run_key == run_key and previous.complete:
        # a redelivered job whose run already committed its last batch: nothing left to do
        log.info("run %s already completed in the destination; not running it again", run_key)
        return RunResult(
            rows_read=0, rows_written=previous.rows_loaded, position=previous.position, resumed=True
        )
    start = start_position(previous, mode=write.mode, source=source)
    schema = source.schema(read)
    _check_columns(schema.names, read, write, where=f"source {source.name}")
    stored = _stored_columns(source, sink, schema, read)
    read, write = replace(read, as_stored=stored), replace(write, as_stored=stored)
    deadline.check(f"before preparing {sink.name}")
    table = sink.prepare(write, schema)
    state = PipelineState(
        pipeline=pipeline,
        run_key=run_key,
        complete=False,
        position=start,
        rows_loaded=0,
    )
    if start is not None:
        log.info(
            "pipeline %s resumes from %s (left by run %s)", pipeline, start, previous and previous.run_key
        )
    rows_read = 0
    with rare_collections():
        for batch in source.batches(replace(read, start=start), schema):
            if should_stop():
                raise CancelledError("cancelled between batches; everything before is committed")
            deadline.check(f"before writing a batch to {sink.name}")
            state.position = batch.position
            state.rows_loaded += len(batch.rows)
            sink.write(table, write, schema, batch.rows, state)
            rows_read += len(batch.rows)
            on_progress(rows_read, state.rows_loaded)
    state.complete = True
    deadline.check(f"before completing the run in {sink.name}")
    sink.finish(table, write, state)
    return RunResult(
        rows_read=rows_read,
        rows_written=state.rows_loaded,
        position=state.position,
        resumed=start is not None,
    )


def _take_lease(
    sink: Sink, pipeline: str, *, wait: float, should_stop: Callable[[], bool], deadline: Deadline
) -> None:
    """The pipeline's destination lease, waiting up to ``wait`` seconds for another run of it to end
    (two manual runs, say); after that the run fails retryably and comes back after its backoff."""
    give_up = time.monotonic() + wait
    while True:
        try:
            sink.lease(pipeline)
            return
        except LeaseHeldError:
            deadline.check(f"waiting for another run of {pipeline} to let go of {sink.name}")
            if time.monotonic() >= give_up or should_stop():
                raise
            time.sleep(deadline.bound(LEASE_POLL))


def _stored_columns(source: Source, sink: Sink, schema: Schema, read: ReadSpec) -> frozenset[str]:
    """Columns the source hands over unconverted: never a key (its typed value makes the resume
    position), and none on cursor reads, whose boundary rows are remembered by a hash of their values."""
    if read.cursor_column:
        return frozenset()
    stored = source.stored_columns(schema, sink.capabilities.reads_text)
    return stored - set(read.key_columns or schema.primary_key)


def _check_columns(names: list[str], read: ReadSpec, write: WriteSpec, *, where: str) -> None:
    wanted = list(([read.cursor_column] if read.cursor_column else []) + list(write.key_columns))
    missing = [c for c in wanted if c not in names]
    if missing:
        raise MovementError(
            f"{where}: no column {', '.join(repr(c) for c in missing)} (have {', '.join(names)})"
        )
