"""Runs of daemons that went offline: not-started runs move to another eligible daemon, running
runs become ``lost`` and are retried elsewhere; runs of pinned pipelines wait for their daemon.
A daemon restarted before it looked offline loses the runs its earlier process was running."""

from __future__ import annotations

import logging
import random
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from cp.models import Daemon, DaemonStatus, Pipeline, Run, RunState
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
    stranded = session.exec(
        select(Run).where(
            col(Run.daemon).in_(list(offline)), col(Run.state).in_([RunState.QUEUED, RunState.RUNNING])
        )
    ).all()
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
    taken = session.exec(
        select(Run).where(Run.daemon == daemon, col(Run.state).in_([RunState.QUEUED, RunState.RUNNING]))
    ).all()
    revoke: list[str] = []
    for run in taken:
        running_before = run.state is RunState.RUNNING and run.started_at and run.started_at < started_at
        if not (running_before or run.task_id in orphaned):
            continue
        if run.task_id:
            revoke.append(run.task_id)
        _lose(session, run, because=f"daemon {daemon} restarted", now=now, rng=rng)
    return revoke


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
