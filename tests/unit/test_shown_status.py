"""Specification of the status as shown: derived at read time with the checker's own rules, and
marked stale when the checker has not run lately."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cp.health import HealthLimits, evaluate
from cp.models import DaemonStatus
from cp.shown_status import Shown, ago, shown_status, status_text

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
LIMITS = HealthLimits(offline_after=15, probe_timeout=5, backlog_threshold=100)
STALE_AFTER = 15.0


@dataclass(frozen=True)
class Row:
    """A daemon row as the view reads it: the checker's facts plus its status_since and reason."""

    status: DaemonStatus
    last_heartbeat_at: datetime | None
    last_probe_sent_at: datetime | None = None
    last_probe_reply_at: datetime | None = None
    queue_depth: int | None = None
    status_since: datetime | None = NOW - timedelta(hours=1)
    status_reason: str | None = "heartbeat"


def row(status: DaemonStatus, *, heard_s_ago: float | None, **more: Any) -> Row:
    heard = NOW - timedelta(seconds=heard_s_ago) if heard_s_ago is not None else None
    return Row(status, heard, **more)


def shown(daemon: Row, *, checker_s_ago: float | None = 0.5) -> Shown:
    ran = NOW - timedelta(seconds=checker_s_ago) if checker_s_ago is not None else None
    return shown_status(daemon, now=NOW, limits=LIMITS, checker_ran_at=ran, stale_after=STALE_AFTER)


def test_a_daemon_recorded_online_whose_last_heartbeat_is_231s_old_is_shown_offline() -> None:
    daemon = row(DaemonStatus.ONLINE, heard_s_ago=231)

    view = shown(daemon, checker_s_ago=240)

    assert view.status is DaemonStatus.OFFLINE
    assert view.recorded is DaemonStatus.ONLINE
    assert view.reason == "no heartbeat for 231s"
    # offline since the heartbeat became overdue, not since the checker last wrote
    assert view.since == NOW - timedelta(seconds=231) + timedelta(seconds=15)
    assert view.stale is True and view.checker_age_s == 240


def test_a_fresh_heartbeat_with_a_checker_that_ran_just_now_is_online_and_not_stale() -> None:
    since = NOW - timedelta(minutes=3)
    view = shown(row(DaemonStatus.ONLINE, heard_s_ago=2, status_since=since, status_reason="said hello"))

    assert (view.status, view.stale, view.since, view.reason) == (
        DaemonStatus.ONLINE,
        False,
        since,
        "said hello",
    )


def test_online_by_heartbeat_but_with_a_checker_silent_for_five_minutes_is_stale() -> None:
    view = shown(row(DaemonStatus.ONLINE, heard_s_ago=2), checker_s_ago=300)

    assert (view.status, view.stale) == (DaemonStatus.ONLINE, True)
    assert status_text("online", stale=view.stale, checker_age_s=view.checker_age_s) == (
        "online (stale: checker last ran 5m ago)"
    )


def test_a_checker_that_never_ran_makes_every_status_stale() -> None:
    view = shown(row(DaemonStatus.ONLINE, heard_s_ago=1), checker_s_ago=None)

    assert view.stale is True and view.checker_age_s is None
    assert status_text("online", stale=True, checker_age_s=None) == "online (stale: checker never ran)"


def test_staleness_starts_only_past_the_threshold() -> None:
    assert shown(row(DaemonStatus.ONLINE, heard_s_ago=1), checker_s_ago=STALE_AFTER).stale is False
    assert shown(row(DaemonStatus.ONLINE, heard_s_ago=1), checker_s_ago=STALE_AFTER + 0.1).stale is True


def test_an_overdue_probe_makes_the_view_degraded_since_the_probe_timed_out() -> None:
    sent = NOW - timedelta(seconds=9)
    view = shown(row(DaemonStatus.ONLINE, heard_s_ago=1, last_probe_sent_at=sent))

    assert view.status is DaemonStatus.DEGRADED
    assert view.since == sent + timedelta(seconds=5)


def test_a_daemon_never_heard_from_stays_unknown() -> None:
    assert shown(row(DaemonStatus.UNKNOWN, heard_s_ago=None)).status is DaemonStatus.UNKNOWN


CASES = [
    ("fresh", row(DaemonStatus.ONLINE, heard_s_ago=3)),
    ("silent", row(DaemonStatus.ONLINE, heard_s_ago=16)),
    ("back", row(DaemonStatus.OFFLINE, heard_s_ago=1)),
    ("backlog", row(DaemonStatus.ONLINE, heard_s_ago=1, queue_depth=101)),
    (
        "answered",
        row(
            DaemonStatus.DEGRADED,
            heard_s_ago=1,
            last_probe_sent_at=NOW - timedelta(seconds=20),
            last_probe_reply_at=NOW - timedelta(seconds=19),
        ),
    ),
    ("never", row(DaemonStatus.OFFLINE, heard_s_ago=None)),
]


@pytest.mark.parametrize("daemon", [daemon for _, daemon in CASES], ids=[name for name, _ in CASES])
def test_the_view_and_the_checker_agree_on_the_same_facts(daemon: Row) -> None:
    assert shown(daemon).status == evaluate(daemon, now=NOW, limits=LIMITS)[0]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (42, "42s"), (119, "119s"), (300, "5m"), (7_300, "2h"), (200_000, "2d")],
    ids=["zero", "seconds", "under-two-minutes", "minutes", "hours", "days"],
)
def test_ages_read_short(seconds: float, text: str) -> None:
    assert ago(seconds) == text
