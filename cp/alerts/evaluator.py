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

from sqlalchemy import bindparam, func, text
from sqlalchemy import delete as sa_delete
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from cp.alerts.conditions import Condition, holding_conditions
from cp.alerts.facts import OldestAges, gather_facts
from cp.alerts.grouping import AlertView, LastNotice, PlannedNotice, plan_notices
from cp.alerts.outbox import AlertNotice
from cp.alerts.rules import AlertsDecl, RuleDecl
from cp.alerts.silences import active_silences, silence_for
from cp.alerts.state_machine import Current, Step, next_step
from cp.config_store import latest_version
from cp.health import HealthLimits
from cp.models import Alert, AlertHistory, AlertState

log = logging.getLogger(__name__)
ALERT_LOCK_ID = 0x6D7963656C616C72  # "mycelalr": evaluations take turns on it
ALERT = Alert.__table__  # type: ignore[attr-defined]
NOTICE = AlertNotice.__table__  # type: ignore[attr-defined]
CHUNK = 500
LOGGED_TRANSITIONS = 20  # per evaluation; a thousand daemons going offline at once log one line more


Transition = tuple[str, str, str | None, str]  # rule, subject, from state, to state


@dataclass
class Outcome:
    """What one evaluation did: the transitions it made and how many notices it queued."""

    transitions: list[Transition] = field(default_factory=list)
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
    connection = session.connection()
    if session.get_bind().dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ALERT_LOCK_ID})
    config = alerts if alerts is not None else configured_alerts(session)
    facts = gather_facts(session, config.rules, now=now, limits=limits, oldest_ages=oldest_ages)
    holding = {(c.rule, c.subject): c for c in holding_conditions(config.rules, facts, now=now)}
    outcome = Outcome()
    existing = {(r.rule, r.subject): r for r in connection.execute(sa_select(ALERT))}
    new: list[tuple[Condition, Step]] = []
    for key in sorted(holding.keys() | existing.keys()):
        row, condition = existing.get(key), holding.get(key)
        current = Current(row.state, row.version, row.active_since) if row is not None else None
        step = next_step(
            current, holds=condition is not None, hold_for=condition.hold_for if condition else 0.0, now=now
        )
        if step is None:
            continue
        if step.action == "insert":
            assert condition is not None
            new.append((condition, step))
        elif apply_transition(session, key, row, condition, step, now=now):
            outcome.transitions.append((*key, _value(step.from_state), str(step.to_state)))
    for condition, step in _insert_new(session, new, now=now):
        outcome.transitions.append((condition.rule, condition.subject, None, str(step.to_state)))
    rows = _refresh(session, holding, silences=active_silences(session, now=now), now=now)
    rules = {r.name: r for r in config.rules}
    views = [_view(row, rules.get(row["rule"])) for row in rows]
    for notice in plan_notices(views, last=_last_notices(session), settings=config.settings, now=now):
        outcome.notices += _insert_notice(session, notice, now=now)
    return outcome


def _insert(session: Session) -> Any:
    return postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _value(state: AlertState | None) -> str | None:
    return state.value if state is not None else None


def _new_values(condition: Condition, step: Step, *, now: datetime) -> dict[str, Any]:
    return {
        "rule": condition.rule,
        "subject": condition.subject,
        "subject_kind": condition.subject_kind,
        "state": step.to_state,
        "severity": condition.severity,
        "version": 1,
        "active_since": step.active_since,
        "fired_at": step.fired_at,
        "resolved_at": None,
        "last_evaluated_at": now,
        "summary": condition.summary,
        "labels": condition.labels,
        "inhibited_by": condition.inhibited_by,
        "silenced_until": None,
        "silence_reason": None,
    }


def _insert_new(
    session: Session, new: list[tuple[Condition, Step]], *, now: datetime
) -> list[tuple[Condition, Step]]:
    """INSERT ... ON CONFLICT DO NOTHING the new alerts, in chunks; those this evaluator inserted."""
    if not new:
        return []
    statement = (
        _insert(session)(ALERT)
        .on_conflict_do_nothing(index_elements=["rule", "subject"])
        .returning(ALERT.c.rule, ALERT.c.subject)
    )
    connection = session.connection()
    inserted: set[tuple[str, str]] = set()
    for start in range(0, len(new), CHUNK):
        chunk = [_new_values(c, s, now=now) for c, s in new[start : start + CHUNK]]
        # RETURNING, not rowcount: what an INSERT ... ON CONFLICT reports as rowcount varies by driver
        inserted.update((rule, subject) for rule, subject in connection.execute(statement, chunk))
    made = [(c, s) for c, s in new if (c.rule, c.subject) in inserted]
    _record(session, [(c.rule, c.subject, None, str(s.to_state), c.summary) for c, s in made], now=now)
    return made


def apply_transition(
    session: Session,
    key: tuple[str, str],
    row: Any,
    condition: Condition | None,
    step: Step,
    *,
    now: datetime,
) -> bool:
    """Make ``step`` on ``row`` (as read at the start) unless another evaluator moved the alert
    first; True, and history written, when this one did."""
    rule, subject = key
    if step.action == "insert":
        assert condition is not None
        return bool(_insert_new(session, [(condition, step)], now=now))
    summary = condition.summary if condition is not None else row.summary
    same_version = (ALERT.c.id == row.id) & (ALERT.c.version == row.version)
    if step.action == "delete":
        statement: Any = sa_delete(ALERT).where(same_version)
    else:
        values: dict[str, Any] = {"state": step.to_state, "version": row.version + 1, "summary": summary}
        if step.to_state is AlertState.PENDING:
            values |= {"active_since": step.active_since, "fired_at": None, "resolved_at": None}
        elif step.to_state is AlertState.FIRING:
            values |= {"active_since": step.active_since, "fired_at": step.fired_at, "resolved_at": None}
        else:
            values |= {"resolved_at": step.resolved_at}
        statement = sa_update(ALERT).where(same_version).values(**values)
    if session.connection().execute(statement).rowcount != 1:
        return False
    _record(session, [(rule, subject, _value(step.from_state), str(step.to_state), summary)], now=now)
    return True


def _record(session: Session, changes: list[tuple[str, str, str | None, str, str]], *, now: datetime) -> None:
    if not changes:
        return
    for rule, subject, before, after, summary in changes[:LOGGED_TRANSITIONS]:
        log.info("alert %s %s: %s -> %s (%s)", rule, subject, before, after, summary)
    if len(changes) > LOGGED_TRANSITIONS:
        log.info("... and %d more alert transitions", len(changes) - LOGGED_TRANSITIONS)
    rows = [
        {"at": now, "rule": r, "subject": s, "from_state": b, "to_state": a, "summary": summary[:500]}
        for r, s, b, a, summary in changes
    ]
    session.connection().execute(sa_insert(AlertHistory.__table__), rows)  # type: ignore[attr-defined]


REFRESHED = ("summary", "labels", "severity", "inhibited_by", "silenced_until", "silence_reason")


def _refresh(
    session: Session, holding: dict[tuple[str, str], Condition], *, silences: list[Any], now: datetime
) -> list[dict[str, Any]]:
    """Summary, labels, inhibition and silence of every alert, as dicts; rows that differ are written."""
    connection = session.connection()
    rows = [dict(r._mapping) for r in connection.execute(sa_select(ALERT))]
    changed = []
    for row in rows:
        condition = holding.get((row["rule"], row["subject"]))
        silence = silence_for(silences, rule=row["rule"], subject=row["subject"])
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
        elif row["state"] is not AlertState.RESOLVED:
            wanted["inhibited_by"] = None
        if any(row[k] != v for k, v in wanted.items()):
            row.update(wanted)
            changed.append({"b_id": row["id"], **{f"b_{k}": row[k] for k in REFRESHED}})
    if changed:
        statement = (
            sa_update(ALERT)
            .where(ALERT.c.id == bindparam("b_id"))
            .values(**{k: bindparam(f"b_{k}") for k in REFRESHED})
        )
        connection.execute(statement, changed)
    connection.execute(
        sa_update(ALERT).where(ALERT.c.state != AlertState.RESOLVED.value).values(last_evaluated_at=now)
    )
    return rows


def _view(row: dict[str, Any], rule: RuleDecl | None) -> AlertView:
    return AlertView(
        rule=row["rule"],
        subject=row["subject"],
        state=AlertState(row["state"]),
        severity=row["severity"],
        summary=row["summary"],
        labels=dict(row["labels"]),
        fired_at=row["fired_at"],
        resolved_at=row["resolved_at"],
        notify=tuple(rule.notify) if rule is not None else (),
        muted=row["silenced_until"] is not None or row["inhibited_by"] is not None,
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


def _insert_notice(session: Session, notice: PlannedNotice, *, now: datetime) -> int:
    """1 when this evaluator queued the notice, 0 when another one already had."""
    values = {
        "dedup_key": notice.dedup_key,
        "created_at": now,
        "notifier": notice.notifier,
        "group_key": notice.group_key,
        "status": notice.status,
        "body": notice.body,
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": "",
    }
    statement = (
        _insert(session)(NOTICE)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(NOTICE.c.id)
    )
    inserted = int(session.connection().execute(statement).first() is not None)
    if inserted:
        log.info(
            "alert notice %s to %s: %s (%s)",
            notice.group_key,
            notice.notifier,
            notice.status,
            notice.body["sent_because"],
        )
    return inserted
