"""The next state of one alert, from its current row and whether its condition holds. Pure.

pending (condition holds, ``for`` not yet elapsed) → firing → resolved (condition gone). A
pending alert whose condition goes away is cleared: its row is deleted, and history says
``cleared``; nothing was ever sent for it. A resolved alert whose condition returns starts over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from cp.models import AlertState

CLEARED: Final = "cleared"


@dataclass(frozen=True)
class Current:
    state: AlertState
    version: int
    active_since: datetime | None


@dataclass(frozen=True)
class Step:
    """A transition: ``action`` insert (no row yet), update (conditional on the version) or delete."""

    action: Literal["insert", "update", "delete"]
    from_state: AlertState | None
    to_state: AlertState | Literal["cleared"]
    active_since: datetime | None = None
    fired_at: datetime | None = None
    resolved_at: datetime | None = None


def next_step(current: Current | None, *, holds: bool, hold_for: float, now: datetime) -> Step | None:
    """The transition to make now, or None when the alert stays as it is."""
    if holds:
        if current is None or current.state is AlertState.RESOLVED:
            action: Literal["insert", "update"] = "insert" if current is None else "update"
            before = current.state if current is not None else None
            if hold_for <= 0:
                return Step(action, before, AlertState.FIRING, active_since=now, fired_at=now)
            return Step(action, before, AlertState.PENDING, active_since=now)
        if current.state is AlertState.PENDING:
            since = current.active_since or now
            if (now - since).total_seconds() >= hold_for:
                return Step("update", AlertState.PENDING, AlertState.FIRING, active_since=since, fired_at=now)
        return None
    if current is None or current.state is AlertState.RESOLVED:
        return None
    if current.state is AlertState.PENDING:
        return Step("delete", AlertState.PENDING, CLEARED)
    return Step("update", AlertState.FIRING, AlertState.RESOLVED, resolved_at=now)
