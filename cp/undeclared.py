"""Names that speak to the control plane without being declared: noted, rate-limited, never used."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import Session, col, select

from cp.models import DaemonEvent, UndeclaredDaemon

log = logging.getLogger(__name__)

UNDECLARED_EVENT = "undeclared_daemon"
_KEY_MAX = 255  # longer names are remembered by digest, so memory stays bounded too


class RecentNames:
    """When each of at most ``capacity`` names was last recorded; the least recent is forgotten first."""

    def __init__(self, *, capacity: int, interval: float) -> None:
        self._capacity = capacity
        self._interval = timedelta(seconds=interval)
        self._seen: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()

    def due(self, name: str, *, now: datetime) -> bool:
        """True when ``name`` was not recorded within the interval."""
        with self._lock:
            last = self._seen.get(_key(name))
        return last is None or now - last >= self._interval

    def remember(self, names: list[str], *, now: datetime) -> None:
        """Note that ``names`` were recorded (once the record is committed)."""
        with self._lock:
            for name in names:
                key = _key(name)
                self._seen[key] = now
                self._seen.move_to_end(key)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)


def _key(name: str) -> str:
    return name if len(name) <= _KEY_MAX else "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def record_undeclared(
    session: Session,
    *,
    name: str,
    now: datetime,
    interval: float,
    keep: int,
    via: str,
    hostname: str | None = None,
    software_version: str | None = None,
) -> bool:
    """Note that ``name`` spoke (``via`` says how); True when this wrote a DaemonEvent.

    At most one event per name per ``interval``, across workers, and at most ``keep`` names kept.
    """
    row = session.exec(select(UndeclaredDaemon).where(UndeclaredDaemon.name == name)).first()
    if row is None:
        row = UndeclaredDaemon(name=name, first_seen_at=now, last_seen_at=now)
        _make_room(session, keep=keep)
    row.last_seen_at = now
    row.hostname = hostname if hostname is not None else row.hostname
    row.software_version = software_version if software_version is not None else row.software_version
    wrote_event = row.last_event_at is None or now - row.last_event_at >= timedelta(seconds=interval)
    if wrote_event:
        row.last_event_at = now
        session.add(
            DaemonEvent(
                at=now,
                daemon=name,
                kind=UNDECLARED_EVENT,
                reason=f"{via} from a daemon the configuration does not declare: ignored",
            )
        )
        shown = name if len(name) <= _KEY_MAX else f"{name[:40]}… ({len(name)} characters)"
        log.warning("daemon %s is not declared in the configuration: its %s is ignored", shown, via)
    session.add(row)
    return wrote_event


def _make_room(session: Session, *, keep: int) -> None:
    """Delete the least recently seen names so that one more fits in ``keep``."""
    stale = session.exec(
        select(UndeclaredDaemon.id).order_by(col(UndeclaredDaemon.last_seen_at).desc()).offset(keep - 1)
    ).all()
    if stale:
        session.exec(delete(UndeclaredDaemon).where(col(UndeclaredDaemon.id).in_(stale)))
