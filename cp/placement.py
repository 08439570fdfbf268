"""Pick the daemon a run goes to."""

from __future__ import annotations

from sqlmodel import Session, col, select

from cp.config_store import eligible
from cp.models import Daemon, DaemonStatus, Pipeline, Run, RunState


def choose_daemon(session: Session, pipeline: Pipeline) -> str | None:
    """The pinned daemon, or the online matching daemon with the fewest active runs.

    Returns None when a label-placed pipeline has no online match: the run then waits.
    """
    if pipeline.daemon is not None:
        return pipeline.daemon
    candidates = [
        d
        for d in session.exec(select(Daemon).where(col(Daemon.status) == DaemonStatus.ONLINE))
        if eligible(pipeline, d)
    ]
    if not candidates:
        return None
    active = _active_runs_by_daemon(session, [d.name for d in candidates])
    best = min(candidates, key=lambda d: (active.get(d.name, 0), d.name))
    return best.name


def _active_runs_by_daemon(session: Session, names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    rows = session.exec(
        select(Run.daemon).where(
            col(Run.daemon).in_(names), col(Run.state).in_([RunState.QUEUED, RunState.RUNNING])
        )
    )
    for name in rows:
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts
