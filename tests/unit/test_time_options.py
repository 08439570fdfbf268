"""--since and --until (mycelial logs, events): an age back from now or an ISO 8601 time; anything
else is one clear error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cp.cli.output import CliError
from cp.cli.time_options import parse_time

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("30s", NOW - timedelta(seconds=30), id="seconds"),
        pytest.param("10m", NOW - timedelta(minutes=10), id="minutes"),
        pytest.param("1.5h", NOW - timedelta(minutes=90), id="fraction"),
        pytest.param("2d", NOW - timedelta(days=2), id="days"),
        pytest.param("1w", NOW - timedelta(days=7), id="weeks"),
        pytest.param("2026-12-01T10:00", datetime(2026, 12, 1, 10, 0, tzinfo=UTC), id="iso-utc-by-default"),
        pytest.param("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, 0, tzinfo=UTC), id="iso-z"),
        pytest.param("2026-12-01T11:00:00+01:00", datetime(2026, 12, 1, 10, 0, tzinfo=UTC), id="iso-offset"),
        pytest.param("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC), id="date"),
    ],
)
def test_times_are_read(text: str, expected: datetime) -> None:
    assert parse_time("--since", text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "10x", "-5m", "", "99999999w"], ids=lambda t: t or "empty")
def test_other_text_is_one_clear_error(text: str) -> None:
    with pytest.raises(CliError, match="expected an age|too far back"):
        parse_time("--since", text, now=NOW)
