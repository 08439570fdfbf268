"""Control-plane processes note that they are alive, in SQL, so `mycelial status` can tell.

Each worker and beat overwrites one ``ProcessSeen`` row of its own every ``liveness_interval``
(one UPDATE, no broadcast ``inspect``), and the health check overwrites its single row each time
it runs. A reader judges them by age (``Settings.seen_within``, ``checker_stale_after``); the
database is the system of record, so the answer survives a broker outage.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete as sa_delete
from sqlalchemy import update as sa_update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from cp.models import ProcessSeen, utcnow

WORKER = "worker"
BEAT = "beat"
HEALTH_CHECK = "health_check"
FORGET_AFTER = timedelta(days=1)  # rows of processes not seen for this long are deleted


@dataclass(frozen=True)
class ProcessIdentity:
    """This process, as its row names it."""

    kind: str
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started_at: datetime = field(default_factory=utcnow)

    @property
    def name(self) -> str:
        return f"{self.hostname}:{self.pid}"


def note_seen(session: Session, who: ProcessIdentity, *, now: datetime) -> None:
    """Overwrite ``who``'s row with ``now`` (created on the first call)."""
    _upsert(session, kind=who.kind, name=who.name, who=who, now=now)


def note_health_check(session: Session, who: ProcessIdentity, *, now: datetime) -> None:
    """The health check ran at ``now``, in process ``who``: one row whatever process runs it."""
    _upsert(session, kind=HEALTH_CHECK, name="", who=who, now=now)


def note_stopped(session: Session, who: ProcessIdentity, *, now: datetime) -> None:
    session.connection().execute(
        sa_update(ProcessSeen)
        .where(col(ProcessSeen.kind) == who.kind, col(ProcessSeen.name) == who.name)
        .values(stopped_at=now)
    )


def forget_old(session: Session, *, now: datetime) -> int:
    """Delete the rows of workers and beats not seen for ``FORGET_AFTER``; how many went."""
    result = session.connection().execute(
        sa_delete(ProcessSeen).where(
            col(ProcessSeen.kind) != HEALTH_CHECK, col(ProcessSeen.seen_at) < now - FORGET_AFTER
        )
    )
    return int(result.rowcount or 0)


def seen_rows(session: Session) -> list[ProcessSeen]:
    return list(
        session.exec(select(ProcessSeen).order_by(col(ProcessSeen.kind), col(ProcessSeen.seen_at).desc()))
    )


def _upsert(session: Session, *, kind: str, name: str, who: ProcessIdentity, now: datetime) -> None:
    values = {
        "seen_at": now,
        "hostname": who.hostname,
        "pid": who.pid,
        "started_at": who.started_at,
        "stopped_at": None,
    }
    where = (col(ProcessSeen.kind) == kind, col(ProcessSeen.name) == name)
    updated = session.connection().execute(sa_update(ProcessSeen).where(*where).values(**values))
    if updated.rowcount:
        return
    try:
        with session.begin_nested():
            session.add(ProcessSeen(kind=kind, name=name, **values))  # type: ignore[arg-type]
    except IntegrityError:  # another process made the row in between: overwrite it
        session.connection().execute(sa_update(ProcessSeen).where(*where).values(**values))
