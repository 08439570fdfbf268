"""Pick the daemon a run goes to: the pinned one, or the online matching daemon with the fewest
active runs. Loaded once per scheduler tick, then decided in memory."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from cp.config_store import eligible
from cp.models import ACTIVE_RUN_STATES, Daemon, DaemonStatus, Pipeline, Run


class Placement:
    """The online daemons and their active-run counts, updated as runs are placed."""

    def __init__(self, online: list[Daemon], active: dict[str, int], offline: set[str] | None = None) -> None:
        self.online = online
        self.active = active
        self.offline = offline or set()

    @classmethod
    def load(cls, session: Session) -> Placement:
        online = list(session.exec(select(Daemon).where(col(Daemon.status) == DaemonStatus.ONLINE)))
        offline = set(session.exec(select(Daemon.name).where(col(Daemon.status) == DaemonStatus.OFFLINE)))
        rows = session.exec(
            select(Run.daemon, func.count())
            .where(col(Run.state).in_(ACTIVE_RUN_STATES), col(Run.daemon).is_not(None))
            .group_by(Run.daemon)
        )
        return cls(online, {name: int(count) for name, count in rows if name is not None}, offline)

    def choose(self, pipeline: Pipeline) -> str | None:
        """None when a label-placed pipeline has no online match: the run then waits."""
        if pipeline.daemon is not None:
            # a pinned run waits for its daemon rather than piling up in an offline daemon's queue
            chosen: str | None = None if pipeline.daemon in self.offline else pipeline.daemon
        else:
            candidates = [d.name for d in self.online if eligible(pipeline, d)]
            chosen = (
                min(candidates, key=lambda name: (self.active.get(name, 0), name)) if candidates else None
            )
        if chosen is not None:
            self.active[chosen] = self.active.get(chosen, 0) + 1
        return chosen


def choose_daemon(session: Session, pipeline: Pipeline) -> str | None:
    """Placement for a single run (a manual trigger)."""
    if pipeline.daemon is not None:
        # a pinned run needs only its daemon's status, not every daemon's active-run count
        status = session.exec(select(Daemon.status).where(Daemon.name == pipeline.daemon)).first()
        return None if status == DaemonStatus.OFFLINE else pipeline.daemon
    return Placement.load(session).choose(pipeline)
