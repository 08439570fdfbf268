"""Durations written as ``30s``, ``5m``, ``4h``, ``1d``, ``1w``: pure parsing shared by the CLI and
the configuration."""

from __future__ import annotations

import re

AGE = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)\s*(s|m|h|d|w)")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
MAX_CHARS = 64
DURATION_HELP = "a duration like 30s, 5m, 4h or 1d"


def parse_duration(text: str) -> float | None:
    """Seconds in ``text``, or None when it is not a duration."""
    value = text.strip()
    match = AGE.fullmatch(value) if len(value) <= MAX_CHARS else None
    if match is None:
        return None
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` (``300`` -> ``5m``), for normalized documents."""
    for unit in ("w", "d", "h", "m"):
        size = UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


MAX_DURATION_S = 366 * 86_400.0
