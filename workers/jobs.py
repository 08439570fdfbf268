"""Run one job through the movement engine and turn the outcome into run events. No Celery here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cp.protocol import RunEventState, RunJob
from workers.confinement.policy import Confinement
from workers.movement.deadline import Clock, Deadline
from workers.movement.engine import run_pipeline
from workers.movement.errors import CancelledError, MovementError
from workers.movement.interface import ReadSpec, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import UnsupportedTypeError
from workers.movement.watchdog import Watchdog
from workers.secrets import SecretError, scrubbed

log = logging.getLogger(__name__)
PROGRESS_EVERY = 1.0  # seconds between progress events, at most


@dataclass(frozen=True)
class Outcome:
    state: RunEventState
    rows_read: int = 0
    rows_written: int = 0
    error: str | None = None
    retryable: bool = False


class Report:
    """Sends run events; progress at most once per ``PROGRESS_EVERY`` seconds, and to ``on_rows``
    (the daemon's own view of its running jobs) after every batch."""

    def __init__(
        self,
        send: Callable[[Outcome], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        on_rows: Callable[[int, int], None] | None = None,
    ) -> None:
        self._send = send
        self._clock = clock
        self._on_rows = on_rows
        self._last_progress = clock()

    def __call__(self, outcome: Outcome) -> None:
        self._send(outcome)

    def progress(self, read: int, written: int) -> None:
        if self._on_rows is not None:
            self._on_rows(read, written)
        now = self._clock()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            # shipped with the run's labels (workers/logs/): `mycelial logs --run` follows a run live
            log.info("progress: %d rows read, %d written", read, written)
            self._send(Outcome("progress", rows_read=read, rows_written=written))


def execute(
    job: RunJob,
    *,
    home: Path,
    confinement: Confinement,
    report: Report,
    should_stop: Callable[[], bool],
    clock: Clock = time.monotonic,
) -> Outcome:
    """Run ``job``; every failure becomes an outcome with a message naming pipeline and cause.

    The attempt's deadline counts from here, before ``started`` is sent, so the control plane (which
    counts from when it hears ``started``) always sees the daemon stop the attempt first; and once
    the control plane ends the attempt (``should_stop``), no batch of it commits any more.
    """
    deadline = Deadline.starting_now(job.timeout_seconds, clock=clock, ended=should_stop)
    where = f"pipeline {job.pipeline.name}"
    report(Outcome("started"))
    try:
        # whatever the control plane checked: a forged or stale job stops here, and the connectors
        # get the resolved paths
        spec = confinement.pipeline(job.pipeline)
        source = make_source(spec.source.kind, spec.source.name, spec.source.options, home=home)
        sink = make_sink(spec.destination.kind, spec.destination.name, spec.destination.options, home=home)
        source.deadline = sink.deadline = deadline
        with Watchdog(deadline, [source, sink], name=job.run_key):
            try:
                source.open()
                sink.open()
                result = run_pipeline(
                    pipeline=spec.name,
                    run_key=job.run_key,
                    source=source,
                    sink=sink,
                    read=ReadSpec(
                        table=spec.source_table,
                        query=spec.source_query,
                        batch_size=spec.batch_size,
                        cursor_column=spec.cursor_column,
                        key_columns=tuple(spec.key_columns),
                    ),
                    write=WriteSpec(
                        table=spec.destination_table,
                        mode=spec.mode,
                        key_columns=tuple(spec.key_columns),
                        schema_drift=spec.schema_drift,
                    ),
                    on_progress=report.progress,
                    should_stop=should_stop,
                    deadline=deadline,
                )
            finally:
                source.close()
                sink.close()
    except CancelledError as exc:
        outcome = Outcome("cancelled", error=f"{where}: {exc}")
    except (MovementError, UnsupportedTypeError, SecretError) as exc:
        outcome = _failed(where, exc, deadline)
    except Exception as exc:
        # the message of an unknown error may quote a connection string: name only its type here
        log.exception("run %s failed unexpectedly", job.run_key)
        unexpected = f"unexpected {type(exc).__name__} (see the daemon log)"
        outcome = _failed(where, exc, deadline, detail=unexpected)
    else:
        outcome = Outcome("succeeded", rows_read=result.rows_read, rows_written=result.rows_written)
    if outcome.error is not None:
        # the last gate before the error leaves the daemon: whatever a connector let through
        outcome = replace(outcome, error=scrubbed(outcome.error))
    report(outcome)
    return outcome


def _failed(where: str, exc: Exception, deadline: Deadline, *, detail: str | None = None) -> Outcome:
    """A failure once the deadline passed is the timeout, whatever the driver said (a cancelled
    statement, a lost lock wait): retryable, like every timeout."""
    text = detail or str(exc)
    if deadline.passed():
        timed_out = text if text.startswith("timed out after ") else str(deadline.error(text))
        return Outcome("timed_out", error=f"{where}: {timed_out}", retryable=True)
    return Outcome("failed", error=f"{where}: {text}", retryable=bool(getattr(exc, "retryable", False)))
