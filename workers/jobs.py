"""Run one job through the movement engine and turn the outcome into run events. No Celery here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cp.protocol import RunEventState, RunJob
from workers.movement.engine import run_pipeline
from workers.movement.errors import CancelledError, MovementError
from workers.movement.interface import ReadSpec, WriteSpec
from workers.movement.registry import make_sink, make_source
from workers.movement.types import UnsupportedTypeError
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
    """Sends run events; progress at most once per ``PROGRESS_EVERY`` seconds."""

    def __init__(
        self, send: Callable[[Outcome], None], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._send = send
        self._clock = clock
        self._last_progress = clock()

    def __call__(self, outcome: Outcome) -> None:
        self._send(outcome)

    def progress(self, read: int, written: int) -> None:
        now = self._clock()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self._send(Outcome("progress", rows_read=read, rows_written=written))


def execute(job: RunJob, *, home: Path, report: Report, should_stop: Callable[[], bool]) -> Outcome:
    """Run ``job``; every failure becomes an outcome with a message naming pipeline and cause."""
    spec = job.pipeline
    where = f"pipeline {spec.name}"
    report(Outcome("started"))
    try:
        source = make_source(spec.source.kind, spec.source.name, spec.source.options, home=home)
        sink = make_sink(spec.destination.kind, spec.destination.name, spec.destination.options, home=home)
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
            )
        finally:
            source.close()
            sink.close()
    except CancelledError as exc:
        outcome = Outcome("cancelled", error=f"{where}: {exc}")
    except (MovementError, UnsupportedTypeError, SecretError) as exc:
        retryable = bool(getattr(exc, "retryable", False))
        outcome = Outcome("failed", error=f"{where}: {exc}", retryable=retryable)
    except Exception as exc:
        # the message of an unknown error may quote a connection string: name only its type here
        log.exception("run %s failed unexpectedly", job.run_key)
        outcome = Outcome("failed", error=f"{where}: unexpected {type(exc).__name__} (see the daemon log)")
    else:
        outcome = Outcome("succeeded", rows_read=result.rows_read, rows_written=result.rows_written)
    if outcome.error is not None:
        # the last gate before the error leaves the daemon: whatever a connector let through
        outcome = replace(outcome, error=scrubbed(outcome.error))
    report(outcome)
    return outcome
