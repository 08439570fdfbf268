"""Evaluation against a database (SQLite and PostgreSQL): transitions, history, notices in the
outbox exactly once, inhibition and silences; two evaluators at once make one of each."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cp.alerts.evaluator import apply_transition, evaluate_alerts
from cp.alerts.outbox import AlertNotice
from cp.alerts.rules import AlertsDecl
from cp.alerts.silences import add_silence, remove_silences
from cp.alerts.state_machine import Current, next_step
from cp.db import session_scope
from cp.health import HealthLimits
from cp.models import Alert, AlertHistory, AlertState, Daemon, RunState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMITS = HealthLimits(offline_after=15, probe_timeout=5, backlog_threshold=100)


@pytest.fixture
def engine(engine_on_both: Engine) -> Engine:
    return engine_on_both


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def config(*rules: dict[str, Any], **settings: Any) -> AlertsDecl:
    return AlertsDecl.model_validate({"settings": settings, "rules": list(rules)})


OFFLINE = {
    "name": "edge-offline",
    "kind": "daemon_offline",
    "for": "30s",
    "severity": "critical",
    "notify": ["ops"],
}


def evaluate(engine: Engine, alerts: AlertsDecl, now: datetime) -> Any:
    with session_scope(engine) as session:
        return evaluate_alerts(session, now=now, limits=LIMITS, alerts=alerts)


def heard(engine: Engine, name: str, when: datetime) -> None:
    with session_scope(engine) as session:
        daemon = session.exec(select(Daemon).where(Daemon.name == name)).one()
        daemon.last_heartbeat_at = when
        session.add(daemon)


def history(engine: Engine) -> list[tuple[str, str, str | None, str]]:
    with Session(engine) as session:
        rows = session.exec(select(AlertHistory).order_by(col(AlertHistory.id)))
        return [(h.rule, h.subject, h.from_state, h.to_state) for h in rows]


def notices(engine: Engine) -> list[AlertNotice]:
    with Session(engine) as session:
        return list(session.exec(select(AlertNotice).order_by(col(AlertNotice.id))))


def alert(engine: Engine, rule: str, subject: str) -> Alert | None:
    with Session(engine) as session:
        return session.exec(select(Alert).where(Alert.rule == rule, Alert.subject == subject)).first()


def test_an_offline_daemon_goes_pending_then_firing_then_resolved_with_one_notice_each(
    engine: Engine, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", last_heartbeat_at=at(-20))
    add_daemon("edge-2", last_heartbeat_at=at(1000))  # online throughout
    rules = config(OFFLINE, group_wait="10s", group_interval="1m")

    evaluate(engine, rules, at(0))
    pending = alert(engine, "edge-offline", "daemon:edge-1")
    assert pending is not None and pending.state is AlertState.PENDING and pending.active_since == at(0)
    assert pending.labels == {"daemon": "edge-1"} and pending.subject_kind == "daemon"

    evaluate(engine, rules, at(29))
    evaluate(engine, rules, at(30))
    assert alert(engine, "edge-offline", "daemon:edge-1").state is AlertState.FIRING  # type: ignore[union-attr]
    assert notices(engine) == []
    evaluate(engine, rules, at(40))
    evaluate(engine, rules, at(45))
    [firing] = notices(engine)
    assert (firing.notifier, firing.status, firing.group_key) == ("ops", "firing", "rule=edge-offline")
    assert firing.body["alerts"][0]["subject"] == "daemon:edge-1" and firing.body["sent_because"] == "new"
    assert firing.delivered_at is None and firing.attempts == 0 and firing.next_attempt_at == at(40)

    heard(engine, "edge-1", at(1000))  # back, and heard from throughout what follows
    evaluate(engine, rules, at(51))
    resolved = alert(engine, "edge-offline", "daemon:edge-1")
    assert resolved is not None and resolved.state is AlertState.RESOLVED and resolved.resolved_at == at(51)
    evaluate(engine, rules, at(100))
    evaluate(engine, rules, at(101))
    evaluate(engine, rules, at(500))
    assert [(n.status, n.body["sent_because"]) for n in notices(engine)] == [
        ("firing", "new"),
        ("resolved", "resolved"),
    ]
    assert history(engine) == [
        ("edge-offline", "daemon:edge-1", None, "pending"),
        ("edge-offline", "daemon:edge-1", "pending", "firing"),
        ("edge-offline", "daemon:edge-1", "firing", "resolved"),
    ]


def test_a_pending_alert_that_clears_is_deleted_and_sends_nothing(
    engine: Engine, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", last_heartbeat_at=at(-20))
    rules = config(OFFLINE)
    evaluate(engine, rules, at(0))

    heard(engine, "edge-1", at(5))
    evaluate(engine, rules, at(6))

    assert alert(engine, "edge-offline", "daemon:edge-1") is None
    assert history(engine)[-1] == ("edge-offline", "daemon:edge-1", "pending", "cleared")
    assert notices(engine) == []


def test_a_removed_rule_resolves_its_firing_alerts(engine: Engine, add_daemon: Callable[..., Daemon]) -> None:
    add_daemon("edge-1", last_heartbeat_at=at(-20))
    evaluate(engine, config({**OFFLINE, "for": "0s"}), at(0))

    evaluate(engine, config(), at(10))

    assert alert(engine, "edge-offline", "daemon:edge-1").state is AlertState.RESOLVED  # type: ignore[union-attr]


def test_an_offline_daemon_inhibits_its_pipelines_alerts_which_send_nothing(
    engine: Engine,
    add_daemon: Callable[..., Daemon],
    add_pipeline: Callable[..., Any],
    add_run: Callable[..., Any],
    session: Session,
) -> None:
    add_daemon("edge-1", last_heartbeat_at=at(-20))
    add_pipeline("orders", daemon="edge-1")
    for i in range(3):
        run = add_run(f"orders-{i}", daemon="edge-1", state=RunState.FAILED)
        run.finished_at = at(-100 + i)
        session.add(run)
    session.commit()
    fails = {"name": "fails", "kind": "run_failures", "threshold": {"count": 3}, "notify": ["ops"]}
    rules = config({**OFFLINE, "for": "0s"}, fails, group_wait="0s")

    evaluate(engine, rules, at(0))

    failing = alert(engine, "fails", "pipeline:orders")
    assert failing is not None and failing.state is AlertState.FIRING
    assert failing.inhibited_by == "daemon:edge-1 offline"
    assert [n.group_key for n in notices(engine)] == ["rule=edge-offline"]

    heard(engine, "edge-1", at(5))
    evaluate(engine, rules, at(6))
    failing = alert(engine, "fails", "pipeline:orders")
    assert failing is not None and failing.inhibited_by is None
    assert sorted(n.group_key for n in notices(engine)) == ["rule=edge-offline", "rule=fails"]


def test_a_silenced_alert_changes_state_but_sends_nothing_until_unsilenced(
    engine: Engine, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", last_heartbeat_at=at(-20))
    with session_scope(engine) as session:
        add_silence(session, "daemon:edge-1", duration=3600, reason="maintenance", author="ops", now=at(0))
    rules = config({**OFFLINE, "for": "0s"}, group_wait="0s")

    evaluate(engine, rules, at(0))
    evaluate(engine, rules, at(10))

    silenced = alert(engine, "edge-offline", "daemon:edge-1")
    assert silenced is not None and silenced.state is AlertState.FIRING
    assert silenced.silenced_until == at(3600) and silenced.silence_reason == "maintenance"
    assert notices(engine) == []

    with session_scope(engine) as session:
        assert remove_silences(session, "daemon:edge-1", now=at(20)) == 1
    evaluate(engine, rules, at(21))
    assert [n.status for n in notices(engine)] == ["firing"]


def test_a_silence_by_rule_name_expires_by_itself(engine: Engine, add_daemon: Callable[..., Daemon]) -> None:
    add_daemon("edge-1", last_heartbeat_at=at(-20))
    with session_scope(engine) as session:
        add_silence(session, "edge-offline", duration=60, reason="deploy", author="ops", now=at(0))
    rules = config({**OFFLINE, "for": "0s"}, group_wait="0s")

    evaluate(engine, rules, at(30))
    assert notices(engine) == []
    evaluate(engine, rules, at(61))
    assert len(notices(engine)) == 1


def test_a_transition_another_evaluator_made_first_is_not_made_again(
    engine: Engine, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", last_heartbeat_at=at(-20))
    evaluate(engine, config(OFFLINE), at(0))
    key = ("edge-offline", "daemon:edge-1")

    rows = []
    for _ in range(2):  # both evaluators read the pending row before either moves it
        with Session(engine) as session:
            row = session.exec(select(Alert)).one()
            session.expunge(row)
            rows.append(row)
    outcomes = []
    for row in rows:
        step = next_step(
            Current(row.state, row.version, row.active_since), holds=True, hold_for=30, now=at(30)
        )
        assert step is not None
        with session_scope(engine) as session:
            outcomes.append(apply_transition(session, key, row, None, step, now=at(30)))

    assert outcomes == [True, False]
    assert [h[3] for h in history(engine)] == ["pending", "firing"]


@pytest.mark.parametrize("evaluators", [2, 4], ids=["two", "four"])
def test_evaluators_running_at_once_make_one_transition_and_one_notice_each(
    engine: Engine, add_daemon: Callable[..., Daemon], evaluators: int
) -> None:
    for i in range(5):
        add_daemon(f"edge-{i}", last_heartbeat_at=at(-20))
    rules = config({**OFFLINE, "for": "0s"}, group_wait="0s")
    barrier = threading.Barrier(evaluators)
    errors: list[BaseException] = []

    def run(now: datetime) -> None:
        try:
            barrier.wait(timeout=10)
            evaluate(engine, rules, now)
        except BaseException as exc:  # reported below
            errors.append(exc)

    for now in (at(0), at(1)):
        threads = [threading.Thread(target=run, args=(now,)) for _ in range(evaluators)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert errors == []

    assert sorted(history(engine)) == [("edge-offline", f"daemon:edge-{i}", None, "firing") for i in range(5)]
    [notice] = notices(engine)
    assert len(notice.body["alerts"]) == 5


def test_queue_backlog_by_age_asks_the_broker_only_for_such_rules(
    engine: Engine, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", last_heartbeat_at=at(1000))
    add_daemon("edge-2", last_heartbeat_at=at(1000))
    asked: list[list[str]] = []

    def oldest_ages(names: list[str]) -> dict[str, float | None]:
        asked.append(sorted(names))
        return {"edge-1": 600.0, "edge-2": None}

    by_depth = config({"name": "deep", "kind": "queue_backlog", "threshold": {"depth": 10}})
    with session_scope(engine) as session:
        evaluate_alerts(session, now=at(0), limits=LIMITS, alerts=by_depth, oldest_ages=oldest_ages)
    assert asked == []

    by_age = config({"name": "old", "kind": "queue_backlog", "threshold": {"oldest_age": "5m"}})
    with session_scope(engine) as session:
        evaluate_alerts(session, now=at(0), limits=LIMITS, alerts=by_age, oldest_ages=oldest_ages)
    assert asked == [["edge-1", "edge-2"]]
    firing = alert(engine, "old", "daemon:edge-1")
    assert (
        firing is not None
        and firing.state is AlertState.FIRING
        and "oldest message waiting 10m" in firing.summary
    )
    assert alert(engine, "old", "daemon:edge-2") is None


def test_rules_come_from_the_newest_applied_configuration(
    engine: Engine, apply: Callable[..., Any], raw_config: dict[str, Any]
) -> None:
    raw_config["notifiers"] = [{"name": "ops", "kind": "log"}]
    raw_config["alerts"] = {"rules": [{**OFFLINE, "for": "0s", "daemons": {"labels": {"site": "paris"}}}]}
    apply(raw_config, now=at(0))
    for name in ("edge-paris", "edge-berlin-1"):
        heard(engine, name, at(-60))  # heard from once, silent since

    evaluate(engine, None, at(1))  # type: ignore[arg-type]

    paris = alert(engine, "edge-offline", "daemon:edge-paris")
    assert paris is not None and paris.state is AlertState.FIRING
    assert alert(engine, "edge-offline", "daemon:edge-berlin-1") is None
