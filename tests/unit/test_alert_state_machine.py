"""An alert's transitions: pending → firing after ``for``, → resolved; a cleared pending is deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cp.alerts.state_machine import CLEARED, Current, next_step
from cp.models import AlertState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PENDING, FIRING, RESOLVED = AlertState.PENDING, AlertState.FIRING, AlertState.RESOLVED


def test_a_new_condition_starts_pending_and_fires_once_for_has_elapsed() -> None:
    start = next_step(None, holds=True, hold_for=30, now=NOW)
    assert start is not None and (start.action, start.to_state, start.active_since) == (
        "insert",
        PENDING,
        NOW,
    )

    pending = Current(PENDING, 1, NOW)
    assert next_step(pending, holds=True, hold_for=30, now=NOW + timedelta(seconds=29)) is None
    fire = next_step(pending, holds=True, hold_for=30, now=NOW + timedelta(seconds=30))
    assert fire is not None and (fire.from_state, fire.to_state) == (PENDING, FIRING)
    assert fire.active_since == NOW and fire.fired_at == NOW + timedelta(seconds=30)


def test_without_for_a_new_condition_fires_at_once() -> None:
    step = next_step(None, holds=True, hold_for=0, now=NOW)

    assert step is not None and (step.to_state, step.fired_at) == (FIRING, NOW)


def test_a_firing_alert_stays_while_the_condition_holds_and_resolves_when_it_goes() -> None:
    firing = Current(FIRING, 2, NOW)

    assert next_step(firing, holds=True, hold_for=30, now=NOW + timedelta(hours=1)) is None
    step = next_step(firing, holds=False, hold_for=0, now=NOW + timedelta(hours=1))
    assert step is not None and (step.action, step.to_state) == ("update", RESOLVED)
    assert step.resolved_at == NOW + timedelta(hours=1)


def test_a_pending_alert_whose_condition_goes_is_cleared_without_firing() -> None:
    step = next_step(Current(PENDING, 1, NOW), holds=False, hold_for=30, now=NOW)

    assert step is not None and (step.action, step.to_state) == ("delete", CLEARED)


def test_a_resolved_alert_starts_over_when_its_condition_returns() -> None:
    step = next_step(Current(RESOLVED, 3, NOW), holds=True, hold_for=30, now=NOW + timedelta(minutes=1))

    assert step is not None and (step.action, step.from_state, step.to_state) == ("update", RESOLVED, PENDING)
    assert next_step(Current(RESOLVED, 3, NOW), holds=False, hold_for=30, now=NOW) is None
    assert next_step(None, holds=False, hold_for=30, now=NOW) is None
