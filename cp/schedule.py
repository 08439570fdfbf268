"""Pure cron math: which fire times of a pipeline are due. Takes ``now``; never reads the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter


def fires_between(
    expression: str, timezone: str, after: datetime, until: datetime, *, limit: int = 1000
) -> list[datetime]:
    """Fire times in (after, until], in UTC, oldest first, at most ``limit`` of them."""
    zone = ZoneInfo(timezone)
    it = croniter(expression, after.astimezone(zone))
    out: list[datetime] = []
    while len(out) < limit:
        fire = it.get_next(datetime).astimezone(UTC)
        if fire > until:
            break
        if fire > after and (not out or fire > out[-1]):
            out.append(fire)
    return out


def latest_due(expression: str, timezone: str, after: datetime, now: datetime) -> datetime | None:
    """The newest fire time in (after, now]: catch-up policy ``latest`` fires only that one."""
    # croniter's get_prev is strictly before its start; nudge so a fire exactly at ``now`` counts
    start = (now + timedelta(microseconds=1)).astimezone(ZoneInfo(timezone))
    fire: datetime = croniter(expression, start).get_prev(datetime)
    fire = fire.astimezone(UTC)
    return fire if after < fire <= now else None


def next_fire(expression: str, timezone: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after``, in UTC."""
    zone = ZoneInfo(timezone)
    fire: datetime = croniter(expression, after.astimezone(zone)).get_next(datetime)
    return fire.astimezone(UTC)
