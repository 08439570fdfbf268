"""After a broker outage the control plane does not call a daemon silent for the time it could
not listen: heartbeats sent meanwhile could not reach it (cp.health.evaluate, listening_since)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cp.health import HealthLimits, evaluate
from cp.models import Daemon, DaemonStatus

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
LIMITS = HealthLimits(offline_after=15.0, probe_timeout=5.0, backlog_threshold=100)


def daemon_last_heard(seconds_ago: float) -> Daemon:
    return Daemon(
        name="edge-1", status=DaemonStatus.ONLINE, last_heartbeat_at=NOW - timedelta(seconds=seconds_ago)
    )


def test_a_daemon_unheard_through_an_outage_is_not_offline_while_the_control_plane_just_began_listening() -> (
    None
):
    # heard 40 s ago, before a 35 s outage; the control plane consumes again since 3 s
    status, _ = evaluate(
        daemon_last_heard(40), now=NOW, limits=LIMITS, listening_since=NOW - timedelta(seconds=3)
    )
    assert status is DaemonStatus.ONLINE


def test_a_daemon_still_unheard_long_after_the_control_plane_listens_again_is_offline() -> None:
    status, reason = evaluate(
        daemon_last_heard(60), now=NOW, limits=LIMITS, listening_since=NOW - timedelta(seconds=20)
    )
    assert (status, reason) == (DaemonStatus.OFFLINE, "no heartbeat for 20s")


def test_a_control_plane_listening_all_along_judges_silence_from_the_last_heartbeat() -> None:
    status, reason = evaluate(
        daemon_last_heard(40), now=NOW, limits=LIMITS, listening_since=NOW - timedelta(hours=1)
    )
    assert (status, reason) == (DaemonStatus.OFFLINE, "no heartbeat for 40s")
    assert evaluate(daemon_last_heard(40), now=NOW, limits=LIMITS)[0] is DaemonStatus.OFFLINE
