"""One evaluation: rules and facts → alert transitions (with history) → notices in the outbox.

Race-free with several evaluators (two workers, two beats): on PostgreSQL each evaluation takes a
transaction-scoped advisory lock, SQLite's BEGIN IMMEDIATE already makes writers take turns; every
transition is also a conditional statement on the row's ``version`` (an INSERT ... ON CONFLICT DO
NOTHING for a new alert) that writes history only when it changed a row, and every notice an
INSERT ... ON CONFLICT (dedup_key) DO NOTHING. The caller commits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import func, text
from sqlalchemy import update as sa_update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from cp.alerts.conditions import Condition, holding_conditions
from cp.alerts.facts import OldestAges, gather_facts
from cp.alerts.grouping import AlertView, LastNotice, plan_notices
from cp.alerts.rules import AlertsDecl, RuleDecl
from cp.alerts.silences import active_silences, silence_for
from cp.alerts.state_machine import Current, Step, next_step
from cp.config_store import latest_version
from cp.health import HealthLimits
from cp.models import Alert, AlertHistory, AlertNotice, AlertState

log = logging.getLogger(__name__)
ALERT_LOCK_ID = 0x6D7963656C616C72  # "mycelalr": evaluations take turns on it


@dataclass
class Outcome:
    transitions: list[tuple[str, str, str | None, str]] = field(
        default_factory=list
    )  # rule, subject, from, to
    notices: int = 0


def configured_alerts(session: Session) -> AlertsDecl:
    """The ``alerts:`` section of the newest configuration version (none: no rules)."""
    latest = latest_version(session)
    section = (latest.document or {}).get("alerts") if latest is not None else None
    return AlertsDecl.model_validate(section) if section else AlertsDecl()


def evaluate_alerts(
    session: Session,
    *,
    now: datetime,
    limits: HealthLimits,
    oldest_ages: OldestAges | None = None,
    alerts: AlertsDecl | None = None,
) -> Outcome:
    """Evaluate every rule at ``now``: move alerts, write history, queue due notices."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ALERT_LOCK_ID})
    config = alerts if alerts is not None else configured_alerts(session)
    facts = gather_facts(session, config.rules, now=now, limits=limits, oldest_ages=oldest_ages)
    holding = {(c.rule, c.subject): c for c in holding_conditions(config.rules, facts, now=now)}
    outcome = Outcome()
    existing = {(a.rule, a.subject): a for a in session.exec(select(Alert))}
    for key in sorted(holding.keys() | existing.keys()):
        row, condition = existing.get(key), holding.get(key)
        current = Current(row.state, row.version, row.active_since) if row is not None else None
        step = next_step(
            current, holds=condition is not None, hold_for=condition.hold_for if condition else 0.0, now=now
        )
        if step is not None and _apply(session, key, row, condition, step, now=now):
            outcome.transitions.append(
                (*key, step.from_state.value if step.from_state else None, str(step.to_state))
            )
    silences = active_silences(session, now=now)
    _refresh(session, holding, silences=silences, now=now)
    rules = {r.name: r for r in config.rules}
    views = [_view(a, rules.get(a.rule)) for a in session.exec(select(Alert))]
    for notice in plan_notices(views, last=_last_notices(session), settings=config.settings, now=now):
        outcome.notices += _insert_notice(
            session, notice.dedup_key, notice.notifier, notice.group_key, notice.status, notice.body, now=now
        )
    return outcome


def _insert(session: Session) -> Any:
    return postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _apply(
    session: Session,
    key: tuple[str, str],
    row: Alert | None,
    condition: Condition | None,
    step: Step,
    *,
    now: datetime,
) -> bool:
    """Make ``step`` unless another evaluator made a transition first; True when this one did."""
    rule, subject = key
    table = Alert.__table__  # type: ignore[attr-defined]
    summary = condition.summary if condition is not None else (row.summary if row is not None else "")
    if step.action == "insert":
        assert condition is not None
        values = {
            "rule": rule,
            "subject": subject,
            "subject_kind": condition.subject_kind,
            "state": step.to_state,
            "severity": condition.severity,
            "version": 1,
            "active_since": step.active_since,
            "fired_at": step.fired_at,
            "last_evaluated_at": now,
            "summary": summary,
            "labels": condition.labels,
            "inhibited_by": condition.inhibited_by,
        }
        statement = (
            _insert(session)(table)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["rule", "subject"])
            .returning(table.c.id)
        )
        # RETURNING, not rowcount: what an INSERT ... ON CONFLICT reports as rowcount varies by driver
        changed = session.connection().execute(statement).first() is not None
    elif step.action == "delete":
        assert row is not None
        statement = sa_delete(table).where(table.c.id == row.id, table.c.version == row.version)
        changed = session.connection().execute(statement).rowcount == 1
    else:
        assert row is not None
        values = {
            "state": step.to_state,
            "version": row.version + 1,
            "last_evaluated_at": now,
            "summary": summary,
        }
        if step.to_state is AlertState.PENDING:
            values |= {"active_since": step.active_since, "fired_at": None, "resolved_at": None}
        elif step.to_state is AlertState.FIRING:
            values |= {"active_since": step.active_since, "fired_at": step.fired_at, "resolved_at": None}
        else:
            values |= {"resolved_at": step.resolved_at}
        statement = (
            sa_update(table).where(table.c.id == row.id, table.c.version == row.version).values(**values)
        )
        changed = session.connection().execute(statement).rowcount == 1
    if changed:
        from_state = step.from_state.value if step.from_state else None
        session.add(
            AlertHistory(
                at=now,
                rule=rule,
                subject=subject,
                from_state=from_state,
                to_state=str(step.to_state),
                summary=summary[:500],
            )
        )
        log.info("alert %s %s: %s -> %s (%s)", rule, subject, from_state, step.to_state, summary)
    session.flush()
    return changed


def _refresh(
    session: Session, holding: dict[tuple[str, str], Condition], *, silences: list[Any], now: datetime
) -> None:
    """Summary, labels, inhibition and silence of every alert; only rows that differ are written."""
    session.expire_all()
    for alert in session.exec(select(Alert)):
        condition = holding.get((alert.rule, alert.subject))
        silence = silence_for(silences, rule=alert.rule, subject=alert.subject)
        wanted: dict[str, Any] = {
            "silenced_until": silence.until if silence else None,
            "silence_reason": silence.reason if silence else None,
        }
        if condition is not None:
            wanted |= {
                "summary": condition.summary,
                "labels": condition.labels,
                "severity": condition.severity,
                "inhibited_by": condition.inhibited_by,
            }
        elif alert.state is not AlertState.RESOLVED:
            wanted["inhibited_by"] = None
        if any(getattr(alert, k) != v for k, v in wanted.items()):
            for k, v in wanted.items():
                setattr(alert, k, v)
            session.add(alert)
    session.flush()
    table = Alert.__table__  # type: ignore[attr-defined]
    session.connection().execute(
        sa_update(table).where(table.c.state != AlertState.RESOLVED.value).values(last_evaluated_at=now)
    )
    session.expire_all()


def _view(alert: Alert, rule: RuleDecl | None) -> AlertView:
    return AlertView(
        rule=alert.rule,
        subject=alert.subject,
        state=AlertState(alert.state),
        severity=alert.severity,
        summary=alert.summary,
        labels=dict(alert.labels),
        fired_at=alert.fired_at,
        resolved_at=alert.resolved_at,
        notify=tuple(rule.notify) if rule is not None else (),
        muted=alert.silenced_until is not None or alert.inhibited_by is not None,
    )


def _last_notices(session: Session) -> dict[tuple[str, str], LastNotice]:
    newest = select(func.max(AlertNotice.id)).group_by(col(AlertNotice.notifier), col(AlertNotice.group_key))
    query = select(AlertNotice).where(col(AlertNotice.id).in_(newest.scalar_subquery()))
    return {
        (n.group_key, n.notifier): LastNotice.from_body(
            dedup_key=n.dedup_key, created_at=n.created_at, body=n.body
        )
        for n in session.exec(query)
    }


def _insert_notice(
    session: Session,
    dedup_key: str,
    notifier: str,
    group_key: str,
    status: str,
    body: dict[str, Any],
    *,
    now: datetime,
) -> int:
    """1 when this evaluator queued the notice, 0 when another one already had."""
    table = AlertNotice.__table__  # type: ignore[attr-defined]
    values = {
        "dedup_key": dedup_key,
        "created_at": now,
        "notifier": notifier,
        "group_key": group_key,
        "status": status,
        "body": body,
        "attempts": 0,
        "next_attempt_at": now,
    }
    statement = (
        _insert(session)(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(table.c.id)
    )
    inserted = int(session.connection().execute(statement).first() is not None)
    if inserted:
        log.info("alert notice %s to %s: %s (%s)", group_key, notifier, status, body["sent_because"])
    return inserted
