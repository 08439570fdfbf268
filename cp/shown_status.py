"""A daemon's status as shown: derived when it is read, with the health checker's own rules.

The ``status`` column is what the health checker last wrote. A checker that stopped (its worker
or beat down) would leave a dead daemon ``online`` there for ever, so every view decides the
status again from the facts (heartbeat age, probe, backlog) with ``cp.health.evaluate`` at the
moment it is read, and says when the checker that keeps probes and queue depths current last
ran: older than ``stale_after``, the status is shown as stale. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cp.health import HealthFacts, HealthLimits, evaluate
from cp.models import DaemonStatus


class ShownFacts(HealthFacts, Protocol):
    @property
    def status_since(self) -> datetime | None: ...
    @property
    def status_reason(self) -> str | None: ...


@dataclass(frozen=True)
class Shown:
    status: DaemonStatus
    reason: str | None
    since: datetime | None
    recorded: DaemonStatus  # what the checker last wrote
    stale: bool  # the checker has not run for longer than stale_after (or never ran)
    checker_ran_at: datetime | None
    checker_age_s: float | None


def shown_status(
    daemon: ShownFacts,
    *,
    now: datetime,
    limits: HealthLimits,
    checker_ran_at: datetime | None,
    stale_after: float,
) -> Shown:
    """The status to show now, why and since when; and whether the checker's view is stale."""
    status, reason = evaluate(daemon, now=now, limits=limits)
    recorded = daemon.status
    since: datetime | None
    if status == recorded:
        since, shown_reason = daemon.status_since, daemon.status_reason or reason
    else:
        since, shown_reason = _since(daemon, status, limits=limits), reason
    age = (now - checker_ran_at).total_seconds() if checker_ran_at is not None else None
    return Shown(
        status=status,
        reason=shown_reason,
        since=since,
        recorded=recorded,
        stale=age is None or age > stale_after,
        checker_ran_at=checker_ran_at,
        checker_age_s=round(age, 1) if age is not None else None,
    )


def _since(daemon: HealthFacts, status: DaemonStatus, *, limits: HealthLimits) -> datetime | None:
    """When the derived status became true, as far as the facts tell."""
    heard = daemon.last_heartbeat_at
    if status is DaemonStatus.OFFLINE:
        return heard + timedelta(seconds=limits.offline_after) if heard is not None else None
    if status is DaemonStatus.DEGRADED:
        sent, replied = daemon.last_probe_sent_at, daemon.last_probe_reply_at
        if sent is not None and (replied is None or replied < sent):
            return sent + timedelta(seconds=limits.probe_timeout)
        return None  # a backlog: when it grew past the threshold is not recorded
    return heard


def ago(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: short ages for tables."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7_200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86_400:.0f}d"


def status_text(status: str, *, stale: bool, checker_age_s: float | None) -> str:
    """``online``, or ``online (stale: checker last ran 5m ago)`` for a table."""
    if not stale:
        return status
    if checker_age_s is None:
        return f"{status} (stale: checker never ran)"
    return f"{status} (stale: checker last ran {ago(checker_age_s)} ago)"
