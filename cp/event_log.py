"""``mycelial events``: daemon events (status changes, config results, rejected messages, security)
and run state changes in one time-ordered feed, filtered in SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists
from sqlmodel import Session, col, select

from cp.logs.ingest import LOGS_DROPPED
from cp.models import DaemonEvent, RunStateChange
from cp.undeclared import UNDECLARED_EVENT

RUN_KIND = "run"  # the kind of a run state change in the feed
# the kinds the control plane writes today; a kind found in the table is accepted as well
KNOWN_KINDS = frozenset(
    {
        RUN_KIND,
        "status",
        "config_applied",
        "config_failed",
        "message_rejected",
        "security",
        "enrolled",
        "key_revoked",
        UNDECLARED_EVENT,
        LOGS_DROPPED,
    }
)
MAX_EVENTS = 10_000


@dataclass(frozen=True)
class EventFilter:
    daemon: str | None = None
    pipeline: str | None = None
    run_key: str | None = None
    kinds: frozenset[str] = field(default_factory=frozenset)  # empty: every kind
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100

    @property
    def runs_only(self) -> bool:
        """A pipeline or a run names no daemon event: only run state changes can match."""
        return self.pipeline is not None or self.run_key is not None

    def wants(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


def unknown_kinds(session: Session, kinds: frozenset[str]) -> list[str]:
    """The kinds asked for that no event has: neither one the control plane writes nor one stored."""
    unknown = []
    for kind in sorted(kinds - KNOWN_KINDS):
        if not session.exec(select(exists().where(col(DaemonEvent.kind) == kind))).one():
            unknown.append(kind)
    return unknown


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def daemon_event_row(event: DaemonEvent) -> dict[str, Any]:
    return {
        "at": _iso(event.at),
        "kind": event.kind,
        "daemon": event.daemon,
        "pipeline": None,
        "run_key": None,
        "attempt": None,
        "from": event.from_status,
        "to": event.to_status,
        "reason": event.reason,
    }


def state_change_row(change: RunStateChange) -> dict[str, Any]:
    return {
        "at": _iso(change.at),
        "kind": RUN_KIND,
        "daemon": change.daemon,
        "pipeline": change.pipeline,
        "run_key": change.run_key,
        "attempt": change.attempt,
        "from": change.from_state,
        "to": change.to_state,
        "reason": change.reason,
    }


def event_rows(session: Session, wanted: EventFilter) -> list[dict[str, Any]]:
    """The newest ``limit`` matching events, oldest first."""
    found: list[tuple[datetime, int, int, dict[str, Any]]] = []  # at, table, id, row: a stable order
    if wanted.wants(RUN_KIND):
        query = select(RunStateChange)
        if wanted.daemon is not None:
            query = query.where(RunStateChange.daemon == wanted.daemon)
        if wanted.pipeline is not None:
            query = query.where(RunStateChange.pipeline == wanted.pipeline)
        if wanted.run_key is not None:
            query = query.where(RunStateChange.run_key == wanted.run_key)
        if wanted.since is not None:
            query = query.where(col(RunStateChange.at) >= wanted.since)
        if wanted.until is not None:
            query = query.where(col(RunStateChange.at) < wanted.until)
        query = query.order_by(col(RunStateChange.at).desc(), col(RunStateChange.id).desc()).limit(
            wanted.limit
        )
        found += [(c.at, 1, c.id or 0, state_change_row(c)) for c in session.exec(query)]
    daemon_kinds = wanted.kinds - {RUN_KIND}
    if not wanted.runs_only and (not wanted.kinds or daemon_kinds):
        events = select(DaemonEvent)
        if daemon_kinds:
            events = events.where(col(DaemonEvent.kind).in_(sorted(daemon_kinds)))
        if wanted.daemon is not None:
            events = events.where(DaemonEvent.daemon == wanted.daemon)
        if wanted.since is not None:
            events = events.where(col(DaemonEvent.at) >= wanted.since)
        if wanted.until is not None:
            events = events.where(col(DaemonEvent.at) < wanted.until)
        events = events.order_by(col(DaemonEvent.at).desc(), col(DaemonEvent.id).desc()).limit(wanted.limit)
        found += [(e.at, 0, e.id or 0, daemon_event_row(e)) for e in session.exec(events)]
    found.sort(key=lambda item: item[:3])
    return [row for *_, row in found[-wanted.limit :]] if wanted.limit else []
