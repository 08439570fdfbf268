"""Specification of the pure cron math. All instants are fixed and timezone-aware; no DST here."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from cp.schedule import fires_between, latest_due, next_fire

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(day: int, hour: int, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    """An instant in June 2025 (an ordinary month: no DST change anywhere tested)."""
    return datetime(2025, 6, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "timezone", "after", "now", "expected"),
    [
        pytest.param("0 * * * *", "UTC", utc(2, 10, 30), utc(2, 11, 15), utc(2, 11), id="hourly"),
        pytest.param(
            "0 * * * *", "UTC", utc(2, 10, 30), utc(2, 11), utc(2, 11), id="fire-exactly-at-now-counts"
        ),
        pytest.param(
            "0 * * * *", "UTC", utc(2, 10, 30), utc(2, 10, 59, 59, 999_999), None, id="just-before-first-fire"
        ),
        pytest.param(
            "0 * * * *", "UTC", utc(2, 11), utc(2, 11, 30), None, id="fire-at-after-is-not-due-again"
        ),
        pytest.param("0 * * * *", "UTC", utc(2, 10, 30), utc(2, 14, 10), utc(2, 14), id="newest-of-several"),
        pytest.param(
            "*/15 * * * *", "UTC", utc(2, 12), utc(2, 12, 44, 59), utc(2, 12, 30), id="every-15-min"
        ),
        pytest.param("@daily", "UTC", utc(1, 12), utc(3, 9), utc(3, 0), id="alias"),
        pytest.param(
            "30 9 * * *", "Europe/Berlin", utc(1, 12), utc(2, 8), utc(2, 7, 30), id="berlin-0930-is-0730-utc"
        ),
        pytest.param("30 9 * * *", "Europe/Berlin", utc(1, 12), utc(2, 7, 29), None, id="berlin-not-yet"),
        pytest.param(
            "0 9 * * 1-5", "America/New_York", utc(6, 14), utc(9, 12), None, id="new-york-weekday-not-yet"
        ),
        pytest.param(
            "0 9 * * 1-5", "America/New_York", utc(6, 14), utc(9, 13), utc(9, 13), id="new-york-monday-0900"
        ),
        pytest.param(
            "0 9 * * *", "Asia/Kathmandu", utc(1, 12), utc(2, 12), utc(2, 3, 15), id="quarter-hour-offset"
        ),
    ],
)
def test_latest_due_is_the_newest_fire_after_the_last_one_and_not_after_now(
    expression: str, timezone: str, after: datetime, now: datetime, expected: datetime | None
) -> None:
    assert latest_due(expression, timezone, after, now) == expected


def test_latest_due_is_in_utc_whatever_the_pipeline_zone() -> None:
    fire = latest_due("30 9 * * *", "Europe/Berlin", utc(1, 12), utc(2, 12))

    assert fire is not None and fire.utcoffset() is not None and fire.tzinfo is UTC
    assert fire.astimezone(BERLIN).hour == 9


def test_nothing_is_due_before_the_first_fire_after_a_schedule_starts() -> None:
    assert latest_due("0 0 * * *", "UTC", utc(2, 0, 0, 1), utc(2, 23, 59)) is None


@pytest.mark.parametrize(
    ("expression", "timezone", "after", "expected"),
    [
        pytest.param("0 * * * *", "UTC", utc(2, 12), utc(2, 13), id="strictly-after-a-fire"),
        pytest.param("0 * * * *", "UTC", utc(2, 12, 0, 0, 1), utc(2, 13), id="just-after-a-fire"),
        pytest.param("*/5 * * * *", "UTC", utc(2, 12, 7), utc(2, 12, 10), id="every-5-min"),
        pytest.param("30 9 * * *", "Europe/Berlin", utc(2, 12), utc(3, 7, 30), id="berlin-next-morning"),
        pytest.param("0 9 * * 1-5", "America/New_York", utc(6, 14), utc(9, 13), id="new-york-skips-weekend"),
        pytest.param("0 0 1 * *", "UTC", utc(2, 12), datetime(2025, 7, 1, tzinfo=UTC), id="monthly"),
    ],
)
def test_next_fire_is_the_first_fire_strictly_after_a_moment(
    expression: str, timezone: str, after: datetime, expected: datetime
) -> None:
    assert next_fire(expression, timezone, after) == expected


def test_next_fire_accepts_an_instant_given_in_another_zone() -> None:
    after = datetime(2025, 6, 2, 14, 0, tzinfo=BERLIN)

    assert next_fire("0 * * * *", "UTC", after) == utc(2, 13)


@pytest.mark.parametrize(
    ("expression", "timezone", "after", "until", "expected"),
    [
        pytest.param(
            "*/15 * * * *",
            "UTC",
            utc(2, 12),
            utc(2, 13),
            [utc(2, 12, 15), utc(2, 12, 30), utc(2, 12, 45), utc(2, 13)],
            id="after-excluded-until-included",
        ),
        pytest.param("0 * * * *", "UTC", utc(2, 12, 1), utc(2, 12, 59), [], id="none-in-window"),
        pytest.param(
            "0 9 * * 1-5",
            "Europe/Berlin",
            utc(6, 0),
            utc(10, 0),
            [utc(6, 7), utc(9, 7)],
            id="berlin-weekdays-skip-weekend",
        ),
        pytest.param(
            "0 0 * * *",
            "Asia/Kolkata",
            utc(1, 0),
            utc(3, 0),
            [utc(1, 18, 30), utc(2, 18, 30)],
            id="half-hour-offset",
        ),
    ],
)
def test_fires_between_lists_every_fire_in_the_window_oldest_first_in_utc(
    expression: str, timezone: str, after: datetime, until: datetime, expected: list[datetime]
) -> None:
    assert fires_between(expression, timezone, after, until) == expected


def test_fires_between_stops_at_the_limit() -> None:
    fires = fires_between("* * * * *", "UTC", utc(2, 0), utc(3, 0), limit=3)

    assert fires == [utc(2, 0, 1), utc(2, 0, 2), utc(2, 0, 3)]
