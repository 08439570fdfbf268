"""``--since`` / ``--until`` values: an age (``90s``, ``10m``, ``2h``, ``7d``, ``1w``) or an ISO time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from cp.cli.output import EXIT_BAD_INPUT, CliError

AGE = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)\s*(s|m|h|d|w)")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
MAX_CHARS = 64


def parse_time(option: str, text: str, *, now: datetime) -> datetime:
    """The instant ``text`` names, ages counted back from ``now``; a time without zone is UTC."""
    value = text.strip()
    age = AGE.fullmatch(value) if len(value) <= MAX_CHARS else None
    if age is not None:
        try:
            return now - timedelta(seconds=float(age.group(1)) * UNIT_SECONDS[age.group(2)])
        except OverflowError:
            raise CliError(f"{option}: {text!r} is too far back", code=EXIT_BAD_INPUT) from None
    try:
        parsed = datetime.fromisoformat(value) if len(value) <= MAX_CHARS else None
    except ValueError:
        parsed = None
    if parsed is None:
        shown = text if len(text) <= MAX_CHARS else f"{text[:MAX_CHARS]}…"
        raise CliError(
            f"{option}: expected an age like 10m, 2h, 7d or an ISO time like 2026-01-31T12:00Z, "
            f"got {shown!r}",
            code=EXIT_BAD_INPUT,
        )
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_window(
    since: str | None, until: str | None, *, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """``(since, until)``, checked to be in order."""
    start = parse_time("--since", since, now=now) if since is not None else None
    end = parse_time("--until", until, now=now) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise CliError(
            f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})", code=EXIT_BAD_INPUT
        )
    return start, end
