"""Reading log records back: filters, pages by id (so ``--follow`` asks only for what is new), and
warnings and errors grouped by shape."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select
from sqlmodel import Session, col, select

from cp.logs.fingerprint import fingerprint, shape
from cp.models import LogRecord
from cp.protocol import LOG_LEVELS

MAX_EXAMPLE_CHARS = 500


class UnknownLevelError(ValueError):
    pass


def levels_from(minimum: str) -> list[str]:
    """The level names at ``minimum`` and above (``warning`` -> WARNING, ERROR, CRITICAL)."""
    name = minimum.upper()
    if name == "WARN":
        name = "WARNING"
    if name not in LOG_LEVELS:
        raise UnknownLevelError(f"unknown level {minimum!r} (one of {', '.join(LOG_LEVELS).lower()})")
    return list(LOG_LEVELS[LOG_LEVELS.index(name) :])


@dataclass(frozen=True)
class LogFilter:
    daemon: str | None = None
    pipeline: str | None = None
    run_key: str | None = None
    levels: list[str] | None = None  # None: every level
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None  # case-insensitive substring of the message

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.daemon is not None:
            query = query.where(col(LogRecord.daemon) == self.daemon)
        if self.pipeline is not None:
            query = query.where(col(LogRecord.pipeline) == self.pipeline)
        if self.run_key is not None:
            query = query.where(col(LogRecord.run_key) == self.run_key)
        if self.levels is not None:
            query = query.where(col(LogRecord.level).in_(self.levels))
        if self.since is not None:
            query = query.where(col(LogRecord.ts) >= self.since)
        if self.until is not None:
            query = query.where(col(LogRecord.ts) < self.until)
        if self.text:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(col(LogRecord.message).ilike(f"%{escaped}%", escape="\\"))
        return query


def newest(session: Session, where: LogFilter, *, limit: int) -> list[LogRecord]:
    """The ``limit`` newest matching records, oldest first (as a terminal shows a log)."""
    query = where.apply(select(LogRecord)).order_by(col(LogRecord.id).desc()).limit(limit)
    return list(reversed(session.exec(query).all()))  # type: ignore[call-overload]


def after(session: Session, where: LogFilter, *, after_id: int, limit: int) -> list[LogRecord]:
    """Matching records stored after ``after_id``, in the order they were stored."""
    query = where.apply(select(LogRecord)).where(col(LogRecord.id) > after_id)
    return list(session.exec(query.order_by(col(LogRecord.id)).limit(limit)).all())  # type: ignore[call-overload]


def last_id(session: Session) -> int:
    found = session.exec(select(LogRecord.id).order_by(col(LogRecord.id).desc()).limit(1)).first()
    return int(found or 0)


def record_row(record: LogRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "daemon": record.daemon,
        "seq": record.seq,
        "ts": record.ts.isoformat(),
        "level": record.level,
        "logger": record.logger,
        "pipeline": record.pipeline,
        "run_key": record.run_key,
        "attempt": record.attempt,
        "message": record.message,
    }


@dataclass
class ErrorGroup:
    fingerprint: str
    level: str
    logger: str
    shape: str
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    daemons: set[str] = field(default_factory=set)
    pipelines: set[str] = field(default_factory=set)
    example: str = ""

    def add(self, record: LogRecord) -> None:
        self.count += 1
        if self.first_seen is None or record.ts < self.first_seen:
            self.first_seen = record.ts
        if self.last_seen is None or record.ts >= self.last_seen:
            self.last_seen = record.ts
            self.example = record.message[:MAX_EXAMPLE_CHARS]
        self.daemons.add(record.daemon)
        if record.pipeline:
            self.pipelines.add(record.pipeline)
        if _rank(record.level) > _rank(self.level):
            self.level = record.level

    def as_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "level": self.level,
            "logger": self.logger,
            "shape": self.shape,
            "count": self.count,
            "first_seen": self.first_seen.isoformat() if self.first_seen else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "daemons": sorted(self.daemons),
            "pipelines": sorted(self.pipelines),
            "example": self.example,
        }


def _rank(level: str) -> int:
    return LOG_LEVELS.index(level) if level in LOG_LEVELS else -1


def group_by_shape(records: Iterator[LogRecord] | list[LogRecord]) -> list[ErrorGroup]:
    """Records grouped by logger and message shape, most frequent first."""
    groups: dict[str, ErrorGroup] = {}
    for record in records:
        key = fingerprint(record.logger, record.message)
        group = groups.get(key)
        if group is None:
            group = groups[key] = ErrorGroup(
                fingerprint=key, level=record.level, logger=record.logger, shape=shape(record.message)
            )
        group.add(record)
    return sorted(groups.values(), key=lambda g: (-g.count, g.fingerprint))


def error_groups(session: Session, where: LogFilter, *, scan_limit: int) -> tuple[list[ErrorGroup], bool]:
    """Warnings and worse matching ``where``, grouped; True when more than ``scan_limit`` records
    matched and only the newest were read."""
    query = where.apply(select(LogRecord)).order_by(col(LogRecord.id).desc()).limit(scan_limit + 1)
    records = list(session.exec(query).all())  # type: ignore[call-overload]
    return group_by_shape(records[:scan_limit]), len(records) > scan_limit
