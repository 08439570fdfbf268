"""Every wall-clock occurrence fires exactly once, across daylight-saving changes, month ends and
leap days. Fixed, zone-aware datetimes; all expected instants in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cp.schedule import fires_between, latest_due, next_fire


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


NY, BERLIN = "America/New_York", "Europe/Berlin"

FIRES_BETWEEN = [
    # (what, expression, zone, after, until, expected fires)
    (
        "NY spring-forward: 02:30 does not exist and fires at 03:00 EDT, the first instant after the gap",
        "30 2 * * *", NY, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12),
        [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)],
    ),
    (
        "NY fall-back: 01:30 happens twice and fires once, at its first occurrence (EDT)",
        "30 1 * * *", NY, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12),
        [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
    ),
    (
        "NY fall-back, every 30 minutes: the repeated hour fires only on its first pass",
        "*/30 * * * *", NY, utc(2026, 11, 1, 4, 0), utc(2026, 11, 1, 8, 0),
        [utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 5, 30),
         utc(2026, 11, 1, 7, 0), utc(2026, 11, 1, 7, 30), utc(2026, 11, 1, 8, 0)],
    ),
    (
        "NY spring-forward, every 30 minutes: the skipped wall times collapse into one fire at 03:00",
        "*/30 * * * *", NY, utc(2026, 3, 8, 6, 0), utc(2026, 3, 8, 8, 0),
        [utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 8, 7, 30), utc(2026, 3, 8, 8, 0)],
    ),
    (
        "Berlin spring-forward: 02:30 does not exist and fires at 03:00 CEST",
        "30 2 * * *", BERLIN, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12),
        [utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)],
    ),
    (
        "Berlin fall-back: 02:30 happens twice and fires once, at 02:30 CEST",
        "30 2 * * *", BERLIN, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12),
        [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
    ),
    (
        "Berlin fall-back, hourly: 02:00 fires once and the clock goes on at 03:00 CET",
        "0 * * * *", BERLIN, utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 2, 30),
        [utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 2, 0)],
    ),
    (
        "Berlin daily at 03:00 across fall-back fires at 03:00 CET, the day's only 03:00",
        "0 3 * * *", BERLIN, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12),
        [utc(2026, 10, 25, 2, 0), utc(2026, 10, 26, 2, 0)],
    ),
    (
        "the 31st fires only in months that have one",
        "0 0 31 * *", "UTC", utc(2026, 1, 1), utc(2026, 8, 1),
        [utc(2026, 1, 31), utc(2026, 3, 31), utc(2026, 5, 31), utc(2026, 7, 31)],
    ),
    (
        "the last day of the month (L) is the 28th in 2026 and the 29th in the leap year 2028",
        "0 12 L 2 *", "UTC", utc(2026, 1, 1), utc(2028, 12, 31),
        [utc(2026, 2, 28, 12), utc(2027, 2, 28, 12), utc(2028, 2, 29, 12)],
    ),
    (
        "29 February fires only in leap years, in the pipeline's zone",
        "0 0 29 2 *", BERLIN, utc(2025, 1, 1), utc(2032, 12, 31),
        [utc(2028, 2, 28, 23), utc(2032, 2, 28, 23)],
    ),
    (
        "a sixth field counts seconds",
        "* * * * * */20", "UTC", utc(2026, 6, 1, 12, 0, 0), utc(2026, 6, 1, 12, 1, 0),
        [utc(2026, 6, 1, 12, 0, 20), utc(2026, 6, 1, 12, 0, 40), utc(2026, 6, 1, 12, 1, 0)],
    ),
    (
        "aliases work: @hourly",
        "@hourly", NY, utc(2026, 6, 1, 12, 30), utc(2026, 6, 1, 15, 0),
        [utc(2026, 6, 1, 13), utc(2026, 6, 1, 14), utc(2026, 6, 1, 15)],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("expression", "zone", "after", "until", "expected"),
    [case[1:] for case in FIRES_BETWEEN],
    ids=[case[0] for case in FIRES_BETWEEN],
)
def test_fires_between(
    expression: str, zone: str, after: datetime, until: datetime, expected: list[datetime]
) -> None:
    assert fires_between(expression, zone, after, until) == expected


LATEST_DUE = [
    (
        "during the repeated hour, the first-pass fire is still the newest due one",
        "30 1 * * *", NY, utc(2026, 10, 31, 12), utc(2026, 11, 1, 6, 45), utc(2026, 11, 1, 5, 30),
    ),
    (
        "once fired, the repeated 01:30 is not due again in the second pass",
        "30 1 * * *", NY, utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 45), None,
    ),
    (
        "after the gap, the skipped 02:30 is due at 03:00 EDT",
        "30 2 * * *", NY, utc(2026, 3, 7, 12), utc(2026, 3, 8, 7, 0, 1), utc(2026, 3, 8, 7, 0),
    ),
    (
        "a fire exactly at now counts",
        "0 12 * * *", BERLIN, utc(2026, 6, 1), utc(2026, 6, 1, 10, 0), utc(2026, 6, 1, 10, 0),
    ),
    (
        "after downtime only the newest missed fire is due",
        "*/5 * * * *", "UTC", utc(2026, 6, 1, 10, 0), utc(2026, 6, 1, 11, 2), utc(2026, 6, 1, 11, 0),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("expression", "zone", "after", "now", "expected"),
    [case[1:] for case in LATEST_DUE],
    ids=[case[0] for case in LATEST_DUE],
)
def test_latest_due(
    expression: str, zone: str, after: datetime, now: datetime, expected: datetime | None
) -> None:
    assert latest_due(expression, zone, after, now) == expected


def test_next_fire_skips_the_second_pass_of_a_repeated_time() -> None:
    first = next_fire("30 1 * * *", NY, utc(2026, 11, 1, 5, 0))
    assert first == utc(2026, 11, 1, 5, 30)
    assert next_fire("30 1 * * *", NY, first) == utc(2026, 11, 2, 6, 30)


def test_croniter_alone_would_fire_the_repeated_time_twice() -> None:
    """Why the guard exists: if this starts failing, croniter fixed it and the guard is redundant."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    it = croniter("30 1 * * *", utc(2026, 11, 1, 4, 0).astimezone(ZoneInfo(NY)))
    fires = [it.get_next(datetime).astimezone(UTC) for _ in range(2)]
    assert fires == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30)]


def test_latest_fires_returns_the_newest_missed_fires_oldest_first() -> None:
    from cp.schedule import latest_fires

    fires = latest_fires("* * * * * *", "UTC", utc(2026, 1, 1), utc(2026, 6, 1, 12, 0, 10), limit=3)
    assert fires == [utc(2026, 6, 1, 12, 0, 8), utc(2026, 6, 1, 12, 0, 9), utc(2026, 6, 1, 12, 0, 10)]
    assert latest_fires("0 * * * *", "UTC", utc(2026, 6, 1, 10, 30), utc(2026, 6, 1, 12, 5), limit=10) == [
        utc(2026, 6, 1, 11),
        utc(2026, 6, 1, 12),
    ]
