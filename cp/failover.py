"""Runs of daemons that went offline: not-started runs move to another eligible daemon, running
runs become ``lost`` and are retried elsewhere; runs of pinned pipelines wait for their daemon.
A daemon restarted before it looked offline loses the runs its earlier process was running, and
each heartbeat squares the runs the control plane believes running with those the daemon runs.

Every function here locks the runs it may change (cp/runs.py ``lock_run``), so a run event applied
at the same time is never undone, and reads them fresh once the lock is held."""

from __future__ import annotations

import logging
import random
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from cp.models import Daemon, DaemonStatus, Pipeline, Run, RunState
from cp.protocol import Heartbeat
from cp.runs import fail_or_retry, move_to_another_daemon

log = logging.getLogger(__name__)


def fail_over(session: Session, *, now: datetime, lost_after: float, rng: random.Random) -> list[str]:
    """Act on the runs of offline daemons; return the task ids to revoke."""
    offline = {
        d.name: d for d in session.exec(select(Daemon).where(col(Daemon.status) == DaemonStatus.OFFLINE))
    }
    if not offline:
        return []
    pinned = {p.name for p in session.exec(select(Pipeline).where(col(Pipeline.daemon).is_not(None)))}
    revoke: list[str] = []
    stranded = _locked(
        session,
        col(Run.daemon).in_(list(offline)),
        col(Run.state).in_([RunState.QUEUED, RunState.RUNNING]),
    )
    for run in stranded:
        daemon = offline[run.daemon or ""]
        if run.task_id:
            revoke.append(run.task_id)
        if run.state is RunState.QUEUED:
            if run.pipeline in pinned:
                continue  # its job waits in the daemon's own queue until the daemon returns
            move_to_another_daemon(session, run, reason=f"daemon {daemon.name} went offline", at=now)
            log.warning("run %s moved off offline daemon %s", run.run_key, daemon.name)
            continue
        since = daemon.status_since or now
        if since + timedelta(seconds=lost_after) > now:
            revoke.pop()
            continue
        _lose(session, run, because=f"daemon {daemon.name} went offline", now=now, rng=rng)
    return revoke


def fail_runs_of_earlier_process(
    session: Session,
    *,
    daemon: str,
    started_at: datetime,
    orphaned_task_ids: Collection[str] = (),
    now: datetime,
    rng: random.Random,
) -> list[str]:
    """The runs an earlier process of a daemon was running, or had taken from its queue, died with
    it: those it started before the current process did, and those whose job the current process
    found held by an earlier one. They are ``lost`` and retried at once (the destination's state lets
    the retry resume); without this they would wait for the broker to redeliver their job, hours
    later. Returns the task ids to revoke, so a late redelivery of an old job is skipped."""
    orphaned = set(orphaned_task_ids)
    taken = _locked(session, Run.daemon == daemon, col(Run.state).in_([RunState.QUEUED, RunState.RUNNING]))
    revoke: list[str] = []
    for run in taken:
        running_before = run.state is RunState.RUNNING and run.started_at and run.started_at < started_at
        if not (running_before or run.task_id in orphaned):
            continue
        if run.task_id:
            revoke.append(run.task_id)
        _lose(session, run, because=f"daemon {daemon} restarted", now=now, rng=rng)
    return revoke


def reconcile_running(
    session: Session,
    *,
    daemon: str,
    running_task_ids: Collection[str],
    sent_at: datetime,
    now: datetime,
    grace: float,
    rng: random.Random,
) -> list[str]:
    """Square what the control plane believes a daemon runs with what its heartbeat says it runs.

    A run believed ``running`` there whose task id the daemon does not list, and that started more
    than ``grace`` before the heartbeat was sent (both on the daemon's clock, so a job that started
    after the heartbeat is not missing), is missing. The first heartbeat that misses it only notes
    when (``unlisted_since``, control-plane clock); one handled at least ``grace`` later that still
    misses it makes it ``lost``, retried under its policy. A single heartbeat is never enough: a job
    that just ended has left the list while its last event may still be on its way. A heartbeat
    that lists the run again clears the note. Returns the task ids to revoke: those lost, and each
    job the daemon runs whose run is finished, cancelled, superseded by a later attempt or unknown
    (the daemon stops such a job between batches).
    """
    listed = set(running_task_ids)
    mine = (col(Run.daemon) == daemon, col(Run.state) == RunState.RUNNING)
    missing = and_(
        *mine,
        col(Run.started_at) < sent_at - timedelta(seconds=grace),
        col(Run.task_id).not_in(listed) if listed else col(Run.task_id).is_not(None),
        # not noted yet, or noted at least the grace ago: one noted since waits, unlocked
        or_(col(Run.unlisted_since).is_(None), col(Run.unlisted_since) <= now - timedelta(seconds=grace)),
    )
    # listed again after a heartbeat missed it
    changing = or_(missing, and_(*mine, col(Run.task_id).in_(listed), col(Run.unlisted_since).is_not(None)))
    revoke: list[str] = []
    # found without a lock, so a heartbeat with nothing missing (the usual one) locks and writes no run
    if session.exec(select(Run.id).where(changing)).first() is not None:
        for run in _locked(session, changing):  # one id-ordered pass: no deadlock with other lockers
            if run.task_id in listed:
                run.unlisted_since = None
            elif run.unlisted_since is None:
                log.info(
                    "run %s not listed by daemon %s; lost if still missing in %ss", run.run_key, daemon, grace
                )
                run.unlisted_since = now
            else:
                if run.task_id:
                    revoke.append(run.task_id)
                _lose(session, run, because=f"daemon {daemon} no longer reported the job", now=now, rng=rng)
            session.add(run)
    return revoke + _not_to_run(session, listed)


def reconcile_heartbeat(
    session: Session, beat: Heartbeat, *, now: datetime, grace: float, rng: random.Random | None = None
) -> list[str]:
    """``reconcile_running`` for one heartbeat; returns the task ids to revoke once committed."""
    return reconcile_running(
        session,
        daemon=beat.name,
        running_task_ids=beat.running_runs,
        sent_at=beat.sent_at,
        now=now,
        grace=grace,
        rng=rng or random.Random(),
    )


def reconcile_heartbeats(
    session: Session, beats: Collection[Heartbeat], *, now: datetime, grace: float, rng: random.Random
) -> list[str]:
    """``reconcile_heartbeat`` for a flush of coalesced heartbeats, one query for all of them first.

    Most daemons run nothing the control plane does not know of: only those with a run it believes
    running there, or that list jobs of their own, go through the per-daemon reconciliation.
    """
    names = {beat.name for beat in beats}
    if not names:
        return []
    believed_running = set(
        session.exec(
            select(Run.daemon).where(col(Run.daemon).in_(names), Run.state == RunState.RUNNING).distinct()
        )
    )
    revoke: list[str] = []
    for beat in beats:
        if beat.name in believed_running or beat.running_runs:
            revoke += reconcile_heartbeat(session, beat, now=now, grace=grace, rng=rng)
    return revoke


def _not_to_run(session: Session, task_ids: Collection[str]) -> list[str]:
    """The task ids, of those a daemon runs, that no current attempt of a live run has."""
    if not task_ids:
        return []
    keys = {task_id: task_id.split("#", 1)[0] for task_id in task_ids}  # see runs.task_id_for
    runs = {r.run_key: r for r in session.exec(select(Run).where(col(Run.run_key).in_(set(keys.values()))))}
    stop: list[str] = []
    for task_id in sorted(task_ids):
        run = runs.get(keys[task_id])
        if run is None or run.state.finished or run.task_id != task_id or run.cancel_requested_at:
            stop.append(task_id)
    return stop


def _locked(session: Session, *where: Any) -> list[Run]:
    """The matching runs, locked in id order (no two lockers deadlock) and read fresh.

    PostgreSQL re-checks ``where`` on a row it waited for, so a run finished meanwhile drops out.
    """
    query = select(Run).where(*where).order_by(col(Run.id)).with_for_update()
    return list(session.exec(query.execution_options(populate_existing=True)))


def _lose(session: Session, run: Run, *, because: str, now: datetime, rng: random.Random) -> None:
    """Retried at once, under the retry policy: the job itself did nothing wrong."""
    log.warning("run %s lost: %s while it ran", run.run_key, because)
    fail_or_retry(
        session,
        run,
        RunState.LOST,
        error=f"lost: {because} while the run was going",
        retryable=True,
        at=now,
        rng=rng,
        immediately=True,
    )
