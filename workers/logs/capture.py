"""A logging handler that puts every record of a daemon process into its log spool, scrubbed of
secrets, clipped, and labelled with the job it belongs to."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from cp.protocol import LOG_LEVELS, clip
from cp.settings import MAX_LOG_MESSAGE_CHARS, MAX_TEXT_CHARS
from workers.logs.spool import LogSpool


@dataclass(frozen=True)
class JobLabels:
    pipeline: str
    run_key: str
    attempt: int


_job: ContextVar[JobLabels | None] = ContextVar("mycelial_job", default=None)


@contextmanager
def job_logging(*, pipeline: str, run_key: str, attempt: int) -> Iterator[None]:
    """Records logged inside carry the job's pipeline, run key and attempt."""
    token = _job.set(JobLabels(pipeline, run_key, attempt))
    try:
        yield
    finally:
        _job.reset(token)


def level_name(levelno: int) -> str:
    """The standard level at or below ``levelno`` (a custom level 25 ships as INFO)."""
    name = "DEBUG"
    for candidate in LOG_LEVELS:
        if levelno >= logging.getLevelName(candidate):
            name = candidate
    return name


class LogCapture(logging.Handler):
    """Appends records to ``spool``; never raises, never logs (a record about capturing would be
    captured again). Records of other processes (a forked pool child) and of threads ``ignore``
    names (the sender's: its broker chatter is about shipping) stay out."""

    def __init__(
        self,
        spool: LogSpool,
        *,
        scrub: Callable[[str], str],
        on_record: Callable[[], None],
        ignore: Callable[[], bool] = lambda: False,
        level: int = logging.INFO,
    ) -> None:
        super().__init__(level)
        self._spool = spool
        self._scrub = scrub
        self._on_record = on_record
        self._ignore = ignore
        self._pid = os.getpid()
        self._inside = threading.local()
        self._formatter = logging.Formatter()
        self.failed = 0  # records that could not be spooled (a full disk, say)

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self._pid or getattr(self._inside, "active", False) or self._ignore():
            return
        self._inside.active = True
        try:
            self._spool.append(self._fields(record))
            self._on_record()
        except Exception:
            self.failed += 1
        finally:
            self._inside.active = False

    def _fields(self, record: logging.LogRecord) -> dict[str, object]:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: what the record holds
            message = f"{record.msg} {record.args}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{record.stack_info}"
        job = _job.get()
        return {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": level_name(record.levelno),
            "logger": clip(self._scrub(record.name), MAX_TEXT_CHARS),
            "pipeline": job.pipeline if job else None,
            "run_key": job.run_key if job else None,
            "attempt": job.attempt if job else None,
            "message": clip(self._scrub(message), MAX_LOG_MESSAGE_CHARS),
        }


def attach(handler: LogCapture, *, level: int, logger: logging.Logger | None = None) -> None:
    """Put ``handler`` on the root logger (``logger``), which lets ``level`` through: a level
    below the logger's own lowers it, with the handlers already there kept at the old one."""
    target = logger if logger is not None else logging.getLogger()
    handler.setLevel(level)
    if target.getEffectiveLevel() > level:
        previous = target.getEffectiveLevel()
        for existing in target.handlers:
            if existing.level < previous:
                existing.setLevel(previous)
        target.setLevel(level)
    if handler not in target.handlers:
        target.addHandler(handler)


def detach(handler: LogCapture, *, logger: logging.Logger | None = None) -> None:
    (logger if logger is not None else logging.getLogger()).removeHandler(handler)
