"""Alerts with real processes on PostgreSQL: two workers and two beats evaluate the rules, a
SIGKILLed daemon's daemon_offline alert goes pending then firing and one notice reaches the
outbox; the daemon back, the alert resolves and one resolved notice follows."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from sqlmodel import Session, col, select

from cp.alerts.outbox import AlertNotice
from cp.db import make_engine
from cp.models import Alert, AlertHistory
from cp.settings import normalize_database_url
from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.integration

HOLD_FOR_S = 3
CONFIG = f"""
daemons:
  - {{name: edge-a, labels: {{site: berlin}}}}
notifiers:
  - {{name: ops-log, kind: log}}
alerts:
  settings: {{group_wait: 0s, group_interval: 1s}}
  rules:
    - name: edge-offline
      kind: daemon_offline
      for: {HOLD_FOR_S}s
      severity: critical
      daemons: {{labels: {{site: berlin}}}}
      notify: [ops-log]
"""


def rows(database_url: str, model: Any) -> list[Any]:
    engine = make_engine(normalize_database_url(database_url))
    try:
        with Session(engine) as session:
            return list(session.exec(select(model).order_by(col(model.id))))
    finally:
        engine.dispose()


def state_of(database_url: str, subject: str) -> str | None:
    return next((str(a.state) for a in rows(database_url, Alert) if a.subject == subject), None)


def evaluations_pass(database_url: str, subject: str, count: int = 3) -> None:
    """Wait until the alert of ``subject`` has been evaluated ``count`` more times."""
    seen: set[Any] = set()

    def more() -> bool:
        seen.update(a.last_evaluated_at for a in rows(database_url, Alert) if a.subject == subject)
        return len(seen) > count

    wait_for(more, timeout=60, what=f"{count} more evaluations")


def test_a_killed_daemon_fires_once_and_resolves_once_with_two_workers_and_two_beats(
    make_stack,  # type: ignore[no-untyped-def]
    make_database_url,
) -> None:
    database_url = make_database_url("postgres")
    stack: Stack = make_stack(
        database_url, heartbeat_interval="1", offline_after_missed="3", alerts_interval="1"
    )
    for name in ("worker-1", "worker-2"):
        stack.start(name, "worker")
    for name in ("beat-1", "beat-2"):
        stack.start(name, "beat")
    stack.start("edge-a", "daemon", "--name", "edge-a", "--labels", "site=berlin")
    stack.wait_heard_from("edge-a")
    stack.cli("apply", "-f", str(stack.write_config(CONFIG)), check=True)
    stack.wait_online("edge-a")
    assert rows(database_url, Alert) == []

    stack.procs["edge-a"].send_signal(signal.SIGKILL)
    wait_for(
        lambda: state_of(database_url, "daemon:edge-a") == "firing",
        timeout=HOLD_FOR_S + 3 + 15,  # for, plus offline_after, plus 15 s
        what="edge-a's alert firing",
        stack=stack,
    )
    [firing] = stack.json("alerts", "--state", "firing")["alerts"]
    assert (firing["rule"], firing["subject"], firing["severity"]) == (
        "edge-offline",
        "daemon:edge-a",
        "critical",
    )
    wait_for(lambda: rows(database_url, AlertNotice), timeout=30, what="a firing notice", stack=stack)
    evaluations_pass(database_url, "daemon:edge-a")
    [notice] = rows(database_url, AlertNotice)
    assert (notice.notifier, notice.status, notice.body["sent_because"]) == ("ops-log", "firing", "new")
    assert [a["subject"] for a in notice.body["alerts"]] == ["daemon:edge-a"]

    stack.procs.pop("edge-a")
    stack.start("edge-a", "daemon", "--name", "edge-a", "--labels", "site=berlin")
    wait_for(
        lambda: state_of(database_url, "daemon:edge-a") == "resolved",
        timeout=60,
        what="edge-a's alert resolved",
        stack=stack,
    )
    wait_for(
        lambda: len(rows(database_url, AlertNotice)) == 2, timeout=30, what="a resolved notice", stack=stack
    )
    time.sleep(3)  # several more evaluations by both beats (every second): still one notice each
    notices = rows(database_url, AlertNotice)
    assert [(n.status, n.body["sent_because"]) for n in notices] == [
        ("firing", "new"),
        ("resolved", "resolved"),
    ]
    history = [(h.from_state, h.to_state) for h in rows(database_url, AlertHistory)]
    assert history == [(None, "pending"), ("pending", "firing"), ("firing", "resolved")]
