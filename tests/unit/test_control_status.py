"""Specification of `mycelial status`: processes seen alive in SQL, and the problems that make it
exit 1."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from cp.cli.status import runs_by_state, status_lines
from cp.control_status import Reachable, summarise
from cp.liveness import (
    BEAT,
    HEALTH_CHECK,
    WORKER,
    ProcessIdentity,
    forget_old,
    note_health_check,
    note_seen,
    note_stopped,
    seen_rows,
)
from cp.models import ProcessSeen, Run, RunState
from cp.views import health_check_ran_at

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
UP = Reachable(True, latency_ms=1.0)
WORKER_1 = ProcessIdentity(WORKER, hostname="cp-host", pid=11, started_at=NOW - timedelta(hours=1))
BEAT_1 = ProcessIdentity(BEAT, hostname="cp-host", pid=12, started_at=NOW - timedelta(hours=1))


def seen(kind: str, *, s_ago: float, stopped: bool = False, name: str = "cp-host:1") -> ProcessSeen:
    at = NOW - timedelta(seconds=s_ago)
    return ProcessSeen(
        kind=kind, name=name, hostname="cp-host", pid=1, seen_at=at, stopped_at=at if stopped else None
    )


def summary(**overrides: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "now": NOW,
        "broker": UP,
        "database": UP,
        "processes": [seen(WORKER, s_ago=2), seen(BEAT, s_ago=3)],
        "checker_ran_at": NOW - timedelta(seconds=1),
        "daemons": [{"name": "edge-1", "status": "online", "declared": True}],
        "runs_last_hour": {"succeeded": 3},
        "seen_within": 15.0,
        "checker_stale_after": 15.0,
        "fail_on_offline": False,
    }
    return summarise(**{**facts, **overrides})


def test_a_process_overwrites_its_own_row_and_a_clean_stop_is_recorded(session: Session) -> None:
    note_seen(session, WORKER_1, now=NOW - timedelta(seconds=10))
    note_seen(session, WORKER_1, now=NOW)
    note_seen(session, BEAT_1, now=NOW)
    note_stopped(session, BEAT_1, now=NOW + timedelta(seconds=1))
    session.commit()

    rows = {(r.kind, r.name): r for r in seen_rows(session)}
    assert set(rows) == {(WORKER, "cp-host:11"), (BEAT, "cp-host:12")}
    assert rows[(WORKER, "cp-host:11")].seen_at == NOW and rows[(WORKER, "cp-host:11")].stopped_at is None
    assert rows[(BEAT, "cp-host:12")].stopped_at == NOW + timedelta(seconds=1)


def test_the_health_check_has_one_row_whichever_worker_ran_it(session: Session) -> None:
    other = ProcessIdentity(WORKER, hostname="other", pid=99)
    note_health_check(session, WORKER_1, now=NOW - timedelta(seconds=1))
    note_health_check(session, other, now=NOW)
    session.commit()

    [row] = session.exec(select(ProcessSeen).where(ProcessSeen.kind == HEALTH_CHECK)).all()
    assert (row.hostname, row.seen_at) == ("other", NOW)
    assert health_check_ran_at(session) == NOW


def test_processes_gone_for_a_day_are_forgotten_but_the_health_check_is_kept(session: Session) -> None:
    note_seen(session, WORKER_1, now=NOW - timedelta(days=2))
    note_health_check(session, WORKER_1, now=NOW - timedelta(days=2))
    note_seen(session, BEAT_1, now=NOW)

    assert forget_old(session, now=NOW) == 1
    assert sorted(r.kind for r in seen_rows(session)) == [BEAT, HEALTH_CHECK]


def test_everything_up_is_ok() -> None:
    doc = summary()

    assert (doc["ok"], doc["problems"]) == (True, [])
    assert doc["daemons"] == {"degraded": 0, "offline": 0, "online": 1, "unknown": 0}
    assert doc["workers"][0]["alive"] is True and doc["health_check"]["stale"] is False
    assert status_lines(doc)[0] == "control plane: ok"


def test_an_unreachable_broker_is_a_problem() -> None:
    doc = summary(broker=Reachable(False, error="no answer within 3s"))

    assert doc["ok"] is False
    assert doc["problems"] == ["broker unreachable: no answer within 3s"]
    assert "problem: broker unreachable: no answer within 3s" in status_lines(doc)


def test_an_unreachable_database_leaves_only_the_broker_to_report() -> None:
    doc = summary(
        database=Reachable(False, error="connection refused"),
        processes=None,
        daemons=None,
        runs_last_hour=None,
    )

    assert doc["problems"] == ["database unreachable: connection refused"]
    assert (doc["workers"], doc["daemons"], doc["runs_last_hour"]) == (None, None, None)


def test_a_worker_not_seen_within_the_window_or_stopped_is_down() -> None:
    late = summary(processes=[seen(WORKER, s_ago=16), seen(BEAT, s_ago=1)])
    stopped = summary(processes=[seen(WORKER, s_ago=1, stopped=True), seen(BEAT, s_ago=1)])

    assert late["problems"] == ["no control-plane worker running (cp-host:1 last seen 16s ago, over 15s)"]
    assert stopped["problems"] == [
        "no control-plane worker running (the last one, cp-host:1, stopped 1s ago)"
    ]


def test_no_beat_ever_seen_is_down() -> None:
    doc = summary(processes=[seen(WORKER, s_ago=1)])

    assert doc["problems"] == ["beat not running (never seen)"]


def test_health_checks_that_stopped_are_down() -> None:
    assert summary(checker_ran_at=NOW - timedelta(seconds=40))["problems"] == [
        "health checks not running: last ran 40s ago (stale after 15s)"
    ]
    assert summary(checker_ran_at=None)["problems"] == [
        "health checks not running: never ran (stale after 15s)"
    ]


def test_offline_daemons_are_reported_and_fail_only_when_asked() -> None:
    daemons = [
        {"name": "edge-1", "status": "offline", "declared": True},
        {"name": "old", "status": "undeclared", "declared": False},
    ]

    assert summary(daemons=daemons)["ok"] is True
    assert summary(daemons=daemons)["daemons"]["offline"] == 1
    failing = summary(daemons=daemons, fail_on_offline=True)
    assert failing["problems"] == ["daemons offline: edge-1"]


def test_runs_of_the_last_hour_count_recent_and_still_active_ones_by_state(session: Session) -> None:
    def add(key: str, state: RunState, *, created_h_ago: float, finished_h_ago: float | None = None) -> None:
        finished = NOW - timedelta(hours=finished_h_ago) if finished_h_ago is not None else None
        session.add(
            Run(
                run_key=key,
                pipeline="p",
                state=state,
                created_at=NOW - timedelta(hours=created_h_ago),
                finished_at=finished,
            )
        )

    add("recent", RunState.SUCCEEDED, created_h_ago=0.5, finished_h_ago=0.4)
    add("finished-lately", RunState.FAILED, created_h_ago=3, finished_h_ago=0.2)
    add("long-running", RunState.RUNNING, created_h_ago=5)
    add("old", RunState.SUCCEEDED, created_h_ago=5, finished_h_ago=4)
    session.commit()

    assert runs_by_state(session, since=NOW - timedelta(hours=1)) == {
        "succeeded": 1,
        "failed": 1,
        "running": 1,
    }
