"""Silences: ``mycelial alerts silence RULE-OR-SUBJECT --for 2h -m REASON`` and ``unsilence``.

A silenced alert still changes state and keeps its history; it only sends nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from cp.models import AlertSilence


def active_silences(session: Session, *, now: datetime) -> list[AlertSilence]:
    query = select(AlertSilence).where(col(AlertSilence.removed_at).is_(None), col(AlertSilence.until) > now)
    return list(session.exec(query))


def silence_for(silences: list[AlertSilence], *, rule: str, subject: str) -> AlertSilence | None:
    """The silence that mutes this alert longest, if any."""
    matching = [s for s in silences if s.matcher in (rule, subject)]
    return max(matching, key=lambda s: s.until) if matching else None


def add_silence(
    session: Session, matcher: str, *, duration: float, reason: str, author: str, now: datetime
) -> AlertSilence:
    silence = AlertSilence(
        matcher=matcher, until=now + timedelta(seconds=duration), reason=reason, author=author, created_at=now
    )
    session.add(silence)
    session.flush()
    return silence


def remove_silences(session: Session, matcher: str, *, now: datetime) -> int:
    """End every active silence of ``matcher``; how many there were."""
    ended = 0
    for silence in active_silences(session, now=now):
        if silence.matcher == matcher:
            silence.removed_at = now
            session.add(silence)
            ended += 1
    session.flush()
    return ended
