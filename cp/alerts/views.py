"""What `mycelial alerts` shows: alerts with their mute, and the history of transitions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from cp.alerts.silences import active_silences, silence_for
from cp.models import Alert, AlertHistory, AlertSilence

HISTORY_MAX = 10_000


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def alert_rows(session: Session, *, now: datetime, state: str | None = None) -> list[dict[str, Any]]:
    """Every alert (or those in ``state``), firing first; silences as of ``now``."""
    query = select(Alert).order_by(col(Alert.rule), col(Alert.subject))
    if state is not None:
        query = query.where(Alert.state == state)
    silences = active_silences(session, now=now)
    order = {"firing": 0, "pending": 1, "resolved": 2}
    rows = []
    for a in session.exec(query):
        silence = silence_for(silences, rule=a.rule, subject=a.subject)
        rows.append(
            {
                "rule": a.rule,
                "subject": a.subject,
                "subject_kind": a.subject_kind,
                "state": str(a.state),
                "severity": a.severity,
                "summary": a.summary,
                "labels": a.labels,
                "active_since": _iso(a.active_since),
                "fired_at": _iso(a.fired_at),
                "resolved_at": _iso(a.resolved_at),
                "last_evaluated_at": _iso(a.last_evaluated_at),
                "inhibited_by": a.inhibited_by,
                "silenced_until": _iso(silence.until) if silence else None,
                "silence_reason": silence.reason if silence else None,
            }
        )
    return sorted(rows, key=lambda r: order.get(r["state"], 3))


def history_rows(session: Session, *, limit: int, rule_or_subject: str | None = None) -> list[dict[str, Any]]:
    """Transitions, newest first."""
    query = select(AlertHistory).order_by(col(AlertHistory.id).desc()).limit(min(limit, HISTORY_MAX))
    if rule_or_subject is not None:
        query = query.where(
            (AlertHistory.rule == rule_or_subject) | (AlertHistory.subject == rule_or_subject)
        )
    return [
        {
            "at": _iso(h.at),
            "rule": h.rule,
            "subject": h.subject,
            "from": h.from_state,
            "to": h.to_state,
            "summary": h.summary,
        }
        for h in session.exec(query)
    ]


def silence_rows(session: Session, *, now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "matcher": s.matcher,
            "until": _iso(s.until),
            "reason": s.reason,
            "author": s.author,
            "created_at": _iso(s.created_at),
        }
        for s in sorted(active_silences(session, now=now), key=lambda s: s.until)
    ]


def known_matchers(session: Session) -> set[str]:
    """Rules and subjects an alert has had, and matchers of silences: what unsilence can name."""
    names = set(session.exec(select(Alert.rule))) | set(session.exec(select(Alert.subject)))
    return names | set(session.exec(select(AlertSilence.matcher)))
