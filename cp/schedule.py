"""Pure cron math: which fire times of a pipeline are due. Takes ``now``; never reads the clock.

Expressions are croniter's: five fields, an optional sixth for seconds (croniter puts it last),
and aliases such as ``@hourly``. They are evaluated on the pipeline's **wall clock** and every
wall-clock occurrence fires exactly once across daylight-saving changes:

- a time skipped by spring-forward fires at the first instant after the gap (02:30 on the US
  spring-forward day fires at 03:00 EDT);
- a time that occurs twice at fall-back fires once, at its first occurrence (croniter 7.0 alone
  fires ``30 1 * * *`` twice on the US fall-back day).

Several wall times in one gap map to the same instant; they fire once, as one run.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

MAX_STEPS = 200_000  # guards the walks below against expressions that almost never match
FALL_BACK_WINDOW = timedelta(hours=6)  # longer than any clock change


def to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant at which the naive wall-clock time ``wall`` happens in ``zone``."""
    first = wall.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant  # exists; when ambiguous, fold=0 is its first occurrence
    return _gap_end(wall, zone)


def _gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after the spring-forward gap that swallowed ``wall``."""
    lo = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)  # before the gap, on the old offset
    hi = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # after the gap, on the new offset
    offset_before = lo.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == offset_before:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def _walls_forward(expression: str, start_wall: datetime) -> Iterator[datetime]:
    it = croniter(expression, start_wall)
    for _ in range(MAX_STEPS):
        yield it.get_next(datetime)


def _walls_backward(expression: str, start_wall: datetime) -> Iterator[datetime]:
    it = croniter(expression, start_wall)
    for _ in range(MAX_STEPS):
        yield it.get_prev(datetime)


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta:
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def fires_between(
    expression: str, timezone: str, after: datetime, until: datetime, *, limit: int = 1000
) -> list[datetime]:
    """Fire instants in (after, until], in UTC, oldest first, at most ``limit`` of them."""
    zone = ZoneInfo(timezone)
    out: list[datetime] = []
    for wall in _walls_forward(expression, _wall(after, zone)):
        instant = to_instant(wall, zone)
        if instant > until:
            break
        if instant > after and (not out or instant > out[-1]):
            out.append(instant)
            if len(out) >= limit:
                break
    return out


def latest_due(expression: str, timezone: str, after: datetime, now: datetime) -> datetime | None:
    """The newest fire instant in (after, now]: catch-up policy ``latest`` fires only that one."""
    fires = latest_fires(expression, timezone, after, now, limit=1)
    return fires[0] if fires else None


def latest_fires(
    expression: str, timezone: str, after: datetime, now: datetime, *, limit: int
) -> list[datetime]:
    """The newest ``limit`` fire instants in (after, now], oldest first (catch-up policy ``all``).

    Walks backwards from ``now``, so a long downtime costs ``limit`` steps, not one per missed fire.
    """
    zone = ZoneInfo(timezone)
    # croniter's get_prev is strictly before its start, and a fire exactly at `now` counts.
    # Shortly after a fall-back the wall clock shows times it already showed: start from the
    # latest wall time reached so far, so first-pass fires are still found.
    earlier = now - FALL_BACK_WINDOW
    repeated = max(timedelta(0), _offset(earlier, zone) - _offset(now, zone))
    start = _wall(now, zone) + repeated + timedelta(microseconds=1)
    newest_first: list[datetime] = []
    for wall in _walls_backward(expression, start):
        instant = to_instant(wall, zone)
        if instant > now:
            continue
        if instant <= after or len(newest_first) >= limit:
            break
        if not newest_first or instant < newest_first[-1]:
            newest_first.append(instant)
    return newest_first[::-1]


def next_fire(expression: str, timezone: str, after: datetime) -> datetime:
    """The first fire instant strictly after ``after``, in UTC."""
    fires = fires_between(expression, timezone, after, datetime.max.replace(tzinfo=UTC), limit=1)
    if not fires:
        raise ValueError(f"cron {expression!r} has no fire time after {after.isoformat()}")
    return fires[0]
