"""``--since 10m`` / ``--until 2026-12-01T12:00``: a duration back from now, or an ISO 8601 time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
MAX_DURATION_DAYS = 100 * 365


class TimeSpecError(ValueError):
    """Text that is neither a duration nor an ISO 8601 time."""


def parse_time(text: str, *, now: datetime) -> datetime:
    """``10m`` (ago), ``1.5h``, ``2d``, or an ISO 8601 time (UTC unless it names its zone)."""
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        if seconds > MAX_DURATION_DAYS * 86_400:
            raise TimeSpecError(f"{text!r} reaches back more than {MAX_DURATION_DAYS} days")
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise TimeSpecError(
            f"{text!r} is neither a duration (30s, 10m, 2h, 7d, 1w) nor an ISO 8601 time (2026-12-01T12:00)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
