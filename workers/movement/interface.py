"""The two small interfaces every connector implements, and the state that ties them together.

A ``Source`` yields batches of typed rows, each with the *position* to resume from after it.
A ``Sink`` writes each batch and the pipeline's state (which holds that position) in one
destination transaction, so a daemon killed at any instant neither loses nor duplicates rows.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from workers.movement.deadline import NO_DEADLINE, Deadline
from workers.movement.errors import LeaseHeldError
from workers.movement.types import LogicalType, Row, Schema

Mode = Literal["replace", "append", "incremental", "upsert"]
Drift = Literal["add", "fail"]
Position = dict[str, Any]  # JSON-able; only the source that produced it interprets it
Names = frozenset[str]


@dataclass(frozen=True)
class ReadSpec:
    """What to read: a table or a query, in batches, from a position."""

    table: str | None
    query: str | None
    batch_size: int
    cursor_column: str | None = None
    key_columns: tuple[str, ...] = ()
    start: Position | None = None
    as_stored: Names = frozenset()  # columns to hand over as stored (see Source.stored_columns)


@dataclass(frozen=True)
class SourceBatch:
    rows: list[Row]
    position: Position


@dataclass
class PipelineState:
    """Kept in the destination, committed with every batch."""

    pipeline: str
    run_key: str
    complete: bool
    position: Position | None
    rows_loaded: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteSpec:
    """Where and how to write."""

    table: str
    mode: Mode
    key_columns: tuple[str, ...] = ()
    schema_drift: Drift = "add"
    as_stored: Names = frozenset()  # columns whose values may come as stored (see Source.stored_columns)


class Connector(ABC):
    """Lifecycle shared by sources and sinks; ``name`` is the connector's name for messages."""

    kind: ClassVar[str]
    # the attempt's time limit, set before ``open``: statement, lock and busy timeouts come from it
    deadline: Deadline = NO_DEADLINE

    def __init__(self, name: str, options: dict[str, Any], *, home: Path) -> None:
        self.name = name
        self.options = options
        self.home = home

    @abstractmethod
    def open(self) -> None:
        """Connect; an unreachable server raises RetryableError."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; safe to call twice and after a failed open."""

    def interrupt(self) -> None:
        """Cancel the statement running on this connector's connections; called from another thread
        when the deadline passes. Nothing to do for connectors that never wait on a server."""
        return None

    def __enter__(self) -> Connector:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Source(Connector):
    @property
    def resumes_across_runs(self) -> bool:
        """True when the position carries over from one run to the next (a folder's done files)."""
        return False

    @abstractmethod
    def schema(self, spec: ReadSpec) -> Schema:
        """The columns the read will yield, with logical types."""

    def stored_columns(self, schema: Schema, reads_text: frozenset[LogicalType]) -> Names:
        """The columns whose values this source can hand over as it stores them, unconverted, to a
        destination that reads ``reads_text`` types from their text.

        A stored value (a number, or text such as ``2024-01-01 10:00:00``) must be one the
        destination's text input reads as the very value conversion would give, or rejects where
        conversion would fail. Saves parsing what the destination parses again. None by default.
        """
        return frozenset()

    @abstractmethod
    def batches(self, spec: ReadSpec, schema: Schema) -> Iterator[SourceBatch]:
        """Rows in a stable order, at most ``spec.batch_size`` per batch, starting after ``spec.start``."""


@dataclass(frozen=True)
class SinkCapabilities:
    transactional: bool = True
    upsert: bool = True
    reads_text: frozenset[LogicalType] = frozenset()  # types it can take as stored values


class Sink(Connector):
    capabilities: ClassVar[SinkCapabilities] = SinkCapabilities()

    @abstractmethod
    def lease(self, pipeline: str) -> None:
        """Hold the destination for ``pipeline`` until ``close``: two runs of one pipeline (overlap
        ``allow``, a redelivered job, a daemon frozen and given up on) share its state and staging
        table and must never write at once. Raises LeaseHeldError (retryable) while another run
        holds it; a holder that dies lets go with its connection."""

    @abstractmethod
    def load_state(self, pipeline: str) -> PipelineState | None:
        """The state committed by the last batch of ``pipeline``, if any."""

    @abstractmethod
    def prepare(self, spec: WriteSpec, schema: Schema) -> str:
        """Create or evolve the target (or a staging table for ``replace``); return the table to write."""

    @abstractmethod
    def write(
        self, table: str, spec: WriteSpec, schema: Schema, rows: list[Row], state: PipelineState
    ) -> None:
        """Write ``rows`` and ``state`` in one transaction, committed only while ``deadline`` has not
        passed (else rolled back, raising TimedOutError).

        A sink may return before that transaction commits, to let the engine read the next batch
        meanwhile; then every later call waits for it first and raises its error, ``finish``
        included, so a run never reports success over a batch that did not commit.
        """

    @abstractmethod
    def finish(self, table: str, spec: WriteSpec, state: PipelineState) -> None:
        """Complete the run: for ``replace`` swap the staging table in atomically; store ``state``."""


def dump_state(state: PipelineState) -> str:
    return json.dumps(
        {
            "run_key": state.run_key,
            "complete": state.complete,
            "position": state.position,
            "rows_loaded": state.rows_loaded,
            "extra": state.extra,
        },
        sort_keys=True,
    )


def load_state_json(pipeline: str, text: str) -> PipelineState:
    data = json.loads(text)
    return PipelineState(
        pipeline=pipeline,
        run_key=data["run_key"],
        complete=bool(data["complete"]),
        position=data.get("position"),
        rows_loaded=int(data.get("rows_loaded", 0)),
        extra=data.get("extra", {}),
    )


STATE_TABLE = "_mycelial_state"


def lease_name(pipeline: str) -> str:
    """A short, stable name for a pipeline's lease (MySQL's lock names end at 64 characters)."""
    return "mycelial:" + hashlib.sha256(pipeline.encode()).hexdigest()[:32]


def held_elsewhere(where: str, pipeline: str) -> LeaseHeldError:
    return LeaseHeldError(f"{where}: another run of pipeline {pipeline} is writing to this destination")
