"""Claiming a due notice so that one worker alone sends it, and recording what came of it.

A claim is one conditional UPDATE: it sets a fresh token and a lease on a notice that is neither
delivered, given up, waiting for its next attempt, nor under another live lease. Two workers (or
the messages of two beats) that race for one notice cannot both change it: on PostgreSQL the loser's
row re-check after the winner's commit sees the lease and updates nothing (its candidate row is
skipped outright with SKIP LOCKED), on SQLite BEGIN IMMEDIATE makes the transactions take turns.
The outcome is written under the same token, together with its AlertDelivery row, in one
transaction: a delivered notice is never left claimable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from cp.alerts.outbox import MAX_NOTICE_ERROR_CHARS, AlertDelivery, AlertNotice


def _due(now: datetime) -> Any:
    return and_(
        col(AlertNotice.delivered_at).is_(None),
        col(AlertNotice.given_up_at).is_(None),
        or_(col(AlertNotice.next_attempt_at).is_(None), col(AlertNotice.next_attempt_at) <= now),
        or_(col(AlertNotice.claimed_until).is_(None), col(AlertNotice.claimed_until) < now),
    )


def claim_next(session: Session, *, token: str, now: datetime, lease: timedelta) -> AlertNotice | None:
    """Claim the oldest due notice for ``token`` until ``now + lease``; None when none is due.

    The caller commits at once, so the lease is visible to everyone before anything is sent.
    """
    pick = select(AlertNotice.id).where(_due(now)).order_by(col(AlertNotice.id)).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    claimed = session.execute(
        update(AlertNotice)
        .where(_due(now), col(AlertNotice.id) == pick.scalar_subquery())
        .values(claimed_by=token, claimed_until=now + lease)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.exec(select(AlertNotice).where(col(AlertNotice.claimed_by) == token)).one()


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to."""

    ok: bool
    at: datetime
    duration_s: float
    http_status: int | None = None
    error: str = ""


def record_attempt(
    session: Session, notice: AlertNotice, *, token: str, attempt: Attempt, retry_at: datetime | None
) -> bool:
    """Write ``attempt`` and the notice's new state in the caller's transaction: delivered, due
    again at ``retry_at``, or given up (``retry_at`` None). False when the claim was lost (the
    lease ran out and another worker took the notice), in which case only the attempt is kept."""
    assert notice.id is not None
    error = attempt.error[:MAX_NOTICE_ERROR_CHARS]
    session.add(
        AlertDelivery(
            notice_id=notice.id,
            notifier=notice.notifier,
            at=attempt.at,
            ok=attempt.ok,
            http_status=attempt.http_status,
            error=error,
            duration_s=round(attempt.duration_s, 6),
        )
    )
    values: dict[str, Any] = {
        "attempts": col(AlertNotice.attempts) + 1,
        "claimed_by": None,
        "claimed_until": None,
        "last_error": error,
    }
    if attempt.ok:
        values["delivered_at"] = attempt.at
    elif retry_at is None:
        values["given_up_at"] = attempt.at
    else:
        values["next_attempt_at"] = retry_at
    written = session.execute(
        update(AlertNotice)
        .where(col(AlertNotice.id) == notice.id, col(AlertNotice.claimed_by) == token)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(written.rowcount == 1)  # type: ignore[attr-defined]
