"""The beat scheduler: static entries from ``beat_schedule.py`` plus pipeline schedules from SQL."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery.beat import Scheduler

from cp.liveness import BEAT, ProcessIdentity, note_seen, note_stopped
from cp.models import utcnow
from cp.runtime import ControlPlane
from cp.schedule import next_fire
from cp.scheduler import TickSettings, scheduled_pipelines, tick

log = logging.getLogger(__name__)
_rng = random.Random()


def make_scheduler_class(cp: ControlPlane) -> type[Scheduler]:
    """A Scheduler subclass bound to ``cp``, for ``app.Beat(scheduler=...)``."""

    this_beat = ProcessIdentity(BEAT)
    noted_at = [float("-inf")]  # monotonic time beat last noted itself alive

    class MycelialScheduler(Scheduler):
        def tick(self, *args: Any, **kwargs: Any) -> float:
            delay = float(super().tick(*args, **kwargs))
            try:
                until_next = fire_pipelines(cp)
            except Exception:
                log.exception("pipeline scheduling step failed; retrying next tick")
                until_next = cp.settings.schedule_poll_interval
            if time.monotonic() - noted_at[0] >= cp.settings.liveness_interval:
                noted_at[0] = time.monotonic()
                note_beat_alive(cp, this_beat)
            return max(0.0, min(delay, until_next))

        def close(self) -> None:
            super().close()
            try:
                with cp.session() as session:
                    note_stopped(session, this_beat, now=utcnow())
            except Exception as exc:
                log.warning("could not note beat stopped: %s", exc)

    return MycelialScheduler


def note_beat_alive(cp: ControlPlane, who: ProcessIdentity) -> None:
    """Beat's row says it ticks (`mycelial status`); a database error waits for the next tick."""
    try:
        with cp.session() as session:
            note_seen(session, who, now=utcnow())
    except Exception as exc:
        log.warning("could not note beat alive: %s", exc)


def fire_pipelines(cp: ControlPlane) -> float:
    """Fire what is due; return seconds until the next fire or the poll interval, if sooner.

    Polling the database every interval is what makes schedule edits take effect without a restart.
    """
    now = utcnow()
    with cp.session() as session:
        settings = TickSettings(expires=cp.settings.run_job_expires, timeout_grace=cp.settings.timeout_grace)
        result = tick(session, now=now, settings=settings, rng=_rng)
        upcoming = [
            next_fire(p.schedule, p.timezone, now) for p in scheduled_pipelines(session) if p.schedule
        ]
    try:
        cp.publish_jobs(result.messages)
    except Exception:
        log.warning("broker unreachable: %d job(s) stay queued for the reconciler", len(result.messages))
    if result.revoke:
        cp.app.control.revoke(result.revoke)
    wait = cp.settings.schedule_poll_interval
    if upcoming:
        wait = min(wait, (min(upcoming) - utcnow()).total_seconds() + 0.001)
    return wait
