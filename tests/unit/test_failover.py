"""Health statuses from heartbeats, probes and backlog; failover of an offline daemon's runs."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import event
from sqlmodel import Session, col, select

from cp.failover import fail_over, fail_runs_of_earlier_process, reconcile_running
from cp.health import HealthLimits, evaluate, record_probe_reply, record_probe_sent, update_statuses
from cp.models import Daemon, DaemonStatus, Pipeline, Run, RunAttempt, RunState
from cp.protocol import ProbeReply, RunEvent
from cp.runs import record_run_event
from cp.scheduler import dispatch_ready_runs

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LIMITS = HealthLimits(offline_after=15, probe_timeout=5, backlog_threshold=100)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def test_heartbeats_with_an_unanswered_probe_make_a_daemon_degraded_then_silence_makes_it_offline(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    daemon = add_daemon("edge-1", last_heartbeat_at=ago(1))
    record_probe_sent(session, daemon, probe_id="p1", now=ago(3))
    assert evaluate(daemon, now=NOW, limits=LIMITS)[0] is DaemonStatus.ONLINE  # not overdue yet
    record_probe_sent(session, daemon, probe_id="p2", now=ago(1))  # the first one still counts
    status, reason = evaluate(daemon, now=NOW + timedelta(seconds=3), limits=LIMITS)
    assert (status, reason) == (
        DaemonStatus.DEGRADED,
        "heartbeats arrive but the probe through its queue is unanswered for 6s",
    )
    assert evaluate(daemon, now=NOW + timedelta(seconds=20), limits=LIMITS) == (
        DaemonStatus.OFFLINE,
        "no heartbeat for 21s",
    )


def test_an_answered_probe_keeps_a_daemon_online_and_records_the_round_trip(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    daemon = add_daemon("edge-1", last_heartbeat_at=ago(1))
    record_probe_sent(session, daemon, probe_id="p1", now=ago(10))
    record_probe_reply(session, ProbeReply(name="edge-1", probe_id="p1", sent_at=ago(10)), now=ago(9.96))
    assert evaluate(daemon, now=NOW, limits=LIMITS)[0] is DaemonStatus.ONLINE
    assert daemon.last_probe_rtt_ms == 40.0


def test_a_queue_backlog_over_the_threshold_makes_a_daemon_degraded(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    daemon = add_daemon("edge-1", last_heartbeat_at=ago(1))
    daemon.queue_depth = 101
    assert evaluate(daemon, now=NOW, limits=LIMITS) == (DaemonStatus.DEGRADED, "queue backlog 101 over 100")


def test_transitions_are_recorded_once_with_their_reason(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    add_daemon("edge-1", last_heartbeat_at=ago(30))
    assert [d.name for d in update_statuses(session, now=NOW, limits=LIMITS)] == ["edge-1"]
    assert update_statuses(session, now=NOW, limits=LIMITS) == []


def place(
    session: Session, add_run: Callable[..., Run], key: str, *, daemon: str, state: RunState, pipeline: str
) -> Run:
    run = add_run(key, daemon=daemon, state=state, pipeline=pipeline)
    session.add(RunAttempt(run_key=key, attempt=1, daemon=daemon, task_id=key, state=state))
    session.commit()
    return run


def test_an_offline_daemons_runs_move_or_are_lost_and_retried_elsewhere_while_pinned_ones_wait(
    session: Session,
    add_daemon: Callable[..., Daemon],
    add_pipeline: Callable[..., Pipeline],
    add_run: Callable[..., Run],
) -> None:
    add_daemon("edge-1", labels={"site": "berlin"}, status=DaemonStatus.OFFLINE)
    add_daemon("edge-2", labels={"site": "berlin"}, last_heartbeat_at=ago(1))
    add_pipeline("labelled", labels={"site": "berlin"}, schedule=None, max_attempts=3)
    add_pipeline("pinned", daemon="edge-1", schedule=None, max_attempts=3)
    place(session, add_run, "labelled@queued", daemon="edge-1", state=RunState.QUEUED, pipeline="labelled")
    place(session, add_run, "labelled@running", daemon="edge-1", state=RunState.RUNNING, pipeline="labelled")
    place(session, add_run, "pinned@queued", daemon="edge-1", state=RunState.QUEUED, pipeline="pinned")
    place(session, add_run, "pinned@running", daemon="edge-1", state=RunState.RUNNING, pipeline="pinned")

    revoke = fail_over(session, now=NOW, lost_after=0, rng=random.Random(0))
    session.commit()

    assert sorted(revoke) == ["labelled@queued", "labelled@running", "pinned@queued", "pinned@running"]
    runs = {r.run_key: r for r in session.exec(select(Run))}
    assert (runs["labelled@queued"].state, runs["labelled@queued"].attempt) == (RunState.SCHEDULED, 2)
    assert (runs["labelled@running"].state, runs["labelled@running"].attempt) == (RunState.SCHEDULED, 2)
    assert runs["pinned@queued"].state is RunState.QUEUED  # its job waits in edge-1's queue
    assert runs["pinned@running"].state is RunState.SCHEDULED  # lost, retried when edge-1 returns
    lost = session.exec(select(RunAttempt).where(col(RunAttempt.state) == RunState.LOST)).all()
    assert sorted(a.run_key for a in lost) == ["labelled@queued", "labelled@running", "pinned@running"]

    messages = dispatch_ready_runs(session, now=NOW, expires=60)
    # without a backoff, one at a time (overlap skip), to edge-2; the pinned run waits for edge-1
    assert [(m.queue, m.task_id) for m in messages] == [("mycelial.daemon.edge-2", "labelled@queued#2")]


def test_running_runs_are_not_lost_before_lost_after_has_passed(
    session: Session,
    add_daemon: Callable[..., Daemon],
    add_pipeline: Callable[..., Pipeline],
    add_run: Callable[..., Run],
) -> None:
    daemon = add_daemon("edge-1", status=DaemonStatus.OFFLINE)
    daemon.status_since = ago(10)
    session.add(daemon)
    add_pipeline("pinned", daemon="edge-1", schedule=None)
    place(session, add_run, "pinned@running", daemon="edge-1", state=RunState.RUNNING, pipeline="pinned")
    assert fail_over(session, now=NOW, lost_after=30, rng=random.Random(0)) == []
    assert session.exec(select(Run)).one().state is RunState.RUNNING


def test_a_daemon_restarted_before_it_looked_offline_loses_the_runs_of_its_earlier_process(
    session: Session,
    add_daemon: Callable[..., Daemon],
    add_pipeline: Callable[..., Pipeline],
    add_run: Callable[..., Run],
) -> None:
    add_daemon("edge-1", last_heartbeat_at=ago(1))
    add_pipeline("orders", daemon="edge-1", schedule=None, max_attempts=3)
    add_pipeline("fresh", daemon="edge-1", schedule=None)
    add_pipeline("waiting", daemon="edge-1", schedule=None)
    old = place(session, add_run, "orders@old", daemon="edge-1", state=RunState.RUNNING, pipeline="orders")
    new = place(session, add_run, "fresh@new", daemon="edge-1", state=RunState.RUNNING, pipeline="fresh")
    place(session, add_run, "waiting@queued", daemon="edge-1", state=RunState.QUEUED, pipeline="waiting")
    old.started_at, new.started_at = ago(30), ago(2)  # the new process started 5 s ago
    session.add_all([old, new])
    session.commit()

    revoke = fail_runs_of_earlier_process(
        session, daemon="edge-1", started_at=ago(5), now=NOW, rng=random.Random(0)
    )
    session.commit()

    assert revoke == ["orders@old"]
    runs = {r.run_key: r for r in session.exec(select(Run))}
    assert (runs["orders@old"].state, runs["orders@old"].attempt) == (RunState.SCHEDULED, 2)
    assert runs["orders@old"].next_attempt_at == NOW  # retried at once: the job did nothing wrong
    assert runs["fresh@new"].state is RunState.RUNNING  # started by the new process
    assert runs["waiting@queued"].state is RunState.QUEUED  # its job is still in the queue
    lost = session.exec(select(RunAttempt).where(RunAttempt.run_key == "orders@old")).one()
    assert (lost.state, lost.error) == (
        RunState.LOST,
        "lost: daemon edge-1 restarted while the run was going",
    )


def test_runs_whose_jobs_an_earlier_process_held_are_lost_even_if_they_never_started(
    session: Session,
    add_daemon: Callable[..., Daemon],
    add_pipeline: Callable[..., Pipeline],
    add_run: Callable[..., Run],
) -> None:
    add_daemon("edge-1", last_heartbeat_at=ago(1))
    add_pipeline("taken", daemon="edge-1", schedule=None, max_attempts=3)
    add_pipeline("waiting", daemon="edge-1", schedule=None)
    place(session, add_run, "taken@queued", daemon="edge-1", state=RunState.QUEUED, pipeline="taken")
    place(session, add_run, "waiting@queued", daemon="edge-1", state=RunState.QUEUED, pipeline="waiting")

    revoke = fail_runs_of_earlier_process(
        session,
        daemon="edge-1",
        started_at=ago(5),
        orphaned_task_ids=["taken@queued", "gone@long-ago"],
        now=NOW,
        rng=random.Random(0),
    )
    session.commit()

    assert revoke == ["taken@queued"]
    runs = {r.run_key: r for r in session.exec(select(Run))}
    assert (runs["taken@queued"].state, runs["taken@queued"].attempt) == (RunState.SCHEDULED, 2)
    assert runs["waiting@queued"].state is RunState.QUEUED  # its job still waits in the queue


def reconcile(
    session: Session,
    listed: list[str],
    *,
    sent_at: datetime | None = None,
    now: datetime = NOW,
    grace: float = 15,
) -> list[str]:
    """One heartbeat handled at ``now``, sent then unless ``sent_at`` says otherwise."""
    revoke = reconcile_running(
        session,
        daemon="edge-1",
        running_task_ids=listed,
        sent_at=now if sent_at is None else sent_at,
        now=now,
        grace=grace,
        rng=random.Random(0),
    )
    session.commit()
    return revoke


def running_since(
    session: Session, add_run: Callable[..., Run], key: str, *, started: datetime, **kw: str
) -> Run:
    run = place(
        session, add_run, key, daemon=kw.get("daemon", "edge-1"), state=RunState.RUNNING, pipeline="orders"
    )
    run.started_at = started
    session.add(run)
    session.commit()
    return run


def test_a_run_its_daemon_no_longer_lists_is_lost_and_retried_once_missing_for_the_grace_period(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule=None, max_attempts=3)
    running_since(session, add_run, "orders@gone", started=ago(60))
    running_since(session, add_run, "orders@just-started", started=ago(3))
    running_since(session, add_run, "orders@listed", started=ago(60))
    running_since(session, add_run, "orders@elsewhere", started=ago(60), daemon="edge-2")
    place(session, add_run, "orders@queued", daemon="edge-1", state=RunState.QUEUED, pipeline="orders")

    # the first heartbeat that misses it only notes when; one sighting is never enough
    assert reconcile(session, ["orders@listed"], now=ago(15)) == []
    noted = {r.run_key: (r.state, r.unlisted_since) for r in session.exec(select(Run))}
    assert noted["orders@gone"] == (RunState.RUNNING, ago(15))
    assert all(since is None for key, (_, since) in noted.items() if key != "orders@gone")
    # a heartbeat sooner than the grace after it still does not lose it
    assert reconcile(session, ["orders@listed"], now=ago(1)) == []
    assert session.exec(select(Run).where(Run.run_key == "orders@gone")).one().state is RunState.RUNNING

    revoke = reconcile(session, ["orders@listed"])

    assert revoke == ["orders@gone"]
    runs = {r.run_key: r for r in session.exec(select(Run))}
    gone = runs.pop("orders@gone")
    assert (gone.state, gone.attempt, gone.next_attempt_at) == (RunState.SCHEDULED, 2, NOW)
    assert gone.unlisted_since is None  # the new attempt starts unnoted
    assert {k: r.state for k, r in runs.items()} == {
        "orders@just-started": RunState.RUNNING,
        "orders@listed": RunState.RUNNING,
        "orders@elsewhere": RunState.RUNNING,
        "orders@queued": RunState.QUEUED,
    }
    lost = session.exec(select(RunAttempt).where(RunAttempt.run_key == "orders@gone")).one()
    assert (lost.state, lost.error) == (
        RunState.LOST,
        "lost: daemon edge-1 no longer reported the job while the run was going",
    )


def test_a_long_run_whose_succeeded_event_is_applied_just_after_a_heartbeat_that_no_longer_lists_it_succeeds(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule=None, max_attempts=3, mode="append")
    running_since(session, add_run, "orders@long", started=ago(3600))

    # the job ended and left the daemon's list; its succeeded event is applied after the heartbeat
    assert reconcile(session, [], now=ago(1)) == []
    succeeded = RunEvent(
        run_key="orders@long", daemon="edge-1", state="succeeded", at=ago(2), attempt=1, seq=9
    )
    assert record_run_event(session, succeeded, now=ago(1), rng=random.Random(0))
    session.commit()
    assert reconcile(session, [], now=NOW + timedelta(seconds=30)) == []

    run = session.exec(select(Run)).one()
    assert (run.state, run.attempt, run.next_attempt_at) == (RunState.SUCCEEDED, 1, None)
    attempts = session.exec(select(RunAttempt).where(RunAttempt.run_key == "orders@long")).all()
    assert [(a.attempt, a.state) for a in attempts] == [(1, RunState.SUCCEEDED)]


def test_a_run_its_daemon_lists_again_is_no_longer_missing_and_a_later_miss_starts_over(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule=None)
    running_since(session, add_run, "orders@back", started=ago(60))

    reconcile(session, [], now=ago(20))
    reconcile(session, ["orders@back"], now=ago(10))
    assert session.exec(select(Run)).one().unlisted_since is None
    assert reconcile(session, []) == []  # 20 s after the first miss, but missing again only since now

    run = session.exec(select(Run)).one()
    assert (run.state, run.attempt, run.unlisted_since) == (RunState.RUNNING, 1, NOW)


def test_a_heartbeat_with_nothing_newly_missing_or_due_writes_no_row(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule=None)
    running_since(session, add_run, "orders@listed", started=ago(60))
    running_since(session, add_run, "orders@noted", started=ago(60))
    reconcile(session, ["orders@listed"], now=ago(5))
    statements: list[str] = []
    engine = session.get_bind()

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert reconcile(session, ["orders@listed"]) == []  # orders@noted is missing, not yet for the grace
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert any(s.startswith("SELECT") for s in statements)
    # neither a write nor a row lock (FOR UPDATE, on PostgreSQL)
    assert not [s for s in statements if s.upper().startswith(("INSERT", "DELETE")) or "UPDATE" in s.upper()]
    assert {r.run_key: r.unlisted_since for r in session.exec(select(Run))} == {
        "orders@listed": None,
        "orders@noted": ago(5),
    }


def test_a_run_started_after_a_late_heartbeat_was_sent_is_not_missing_from_it(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule=None)
    running_since(session, add_run, "orders@new", started=ago(60))

    # a heartbeat sent 100 s ago (daemon clock) and handled only now, behind a backlog
    assert reconcile(session, [], sent_at=ago(100)) == []
    assert session.exec(select(Run)).one().state is RunState.RUNNING


def test_a_lost_run_without_attempts_left_ends_lost(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule=None, max_attempts=1)
    running_since(session, add_run, "orders@gone", started=ago(60))

    reconcile(session, [], now=ago(15))
    reconcile(session, [])

    run = session.exec(select(Run)).one()
    assert (run.state, run.finished_at) == (RunState.LOST, NOW)


def test_jobs_a_daemon_runs_for_finished_cancelled_superseded_or_unknown_runs_are_revoked(
    session: Session, add_pipeline: Callable[..., Pipeline], add_run: Callable[..., Run]
) -> None:
    add_pipeline("orders", daemon="edge-1", schedule=None)
    place(session, add_run, "orders@done", daemon="edge-1", state=RunState.SUCCEEDED, pipeline="orders")
    place(session, add_run, "orders@lost", daemon="edge-1", state=RunState.LOST, pipeline="orders")
    stopping = running_since(session, add_run, "orders@stopping", started=ago(60))
    retried = place(
        session, add_run, "orders@retried", daemon="edge-2", state=RunState.RUNNING, pipeline="orders"
    )
    running_since(session, add_run, "orders@live", started=ago(60))
    stopping.cancel_requested_at = ago(2)
    retried.attempt, retried.task_id = 2, "orders@retried#2"
    session.add_all([stopping, retried])
    session.commit()
    listed = ["orders@done", "orders@lost", "orders@stopping", "orders@retried", "orders@live", "ghost@1"]

    revoke = reconcile(session, listed)

    assert sorted(revoke) == ["ghost@1", "orders@done", "orders@lost", "orders@retried", "orders@stopping"]
    states = {r.run_key: r.state for r in session.exec(select(Run))}
    assert states["orders@live"] is RunState.RUNNING and states["orders@stopping"] is RunState.RUNNING
    assert states["orders@done"] is RunState.SUCCEEDED
