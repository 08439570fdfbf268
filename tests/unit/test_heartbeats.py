"""Specification of heartbeat coalescing: only the newest heartbeat of each daemon is written."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from cp.heartbeats import Flusher, HeartbeatCoalescer, ReceivedHeartbeat
from cp.protocol import Heartbeat

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


def beat(name: str, seconds: float, *, cpu: float | None = None) -> ReceivedHeartbeat:
    sent = NOW + timedelta(seconds=seconds)
    return ReceivedHeartbeat(Heartbeat(name=name, sent_at=sent, cpu_percent=cpu), received_at=sent)


def test_only_the_newest_heartbeat_of_each_daemon_waits_for_the_flush() -> None:
    coalescer = HeartbeatCoalescer(max_daemons=10)
    for received in (beat("a", 1), beat("b", 1), beat("a", 3), beat("a", 2)):
        coalescer.offer(received)

    pending, dropped = coalescer.take()

    assert sorted((r.beat.name, r.beat.sent_at) for r in pending) == [
        ("a", NOW + timedelta(seconds=3)),
        ("b", NOW + timedelta(seconds=1)),
    ]
    assert dropped == 0
    assert coalescer.take() == ([], 0)


def test_a_full_coalescer_drops_new_daemons_but_still_takes_newer_heartbeats_of_waiting_ones() -> None:
    coalescer = HeartbeatCoalescer(max_daemons=2)
    for received in (beat("a", 1), beat("b", 1), beat("c", 1), beat("a", 2, cpu=5.0)):
        coalescer.offer(received)

    pending, dropped = coalescer.take()

    assert sorted((r.beat.name, r.beat.cpu_percent) for r in pending) == [("a", 5.0), ("b", None)]
    assert dropped == 1


def test_a_batch_given_back_loses_to_heartbeats_that_arrived_meanwhile() -> None:
    coalescer = HeartbeatCoalescer(max_daemons=10)
    coalescer.offer(beat("a", 1))
    batch, _ = coalescer.take()
    coalescer.offer(beat("a", 5))

    coalescer.give_back(batch)

    [pending], _ = coalescer.take()
    assert pending.beat.sent_at == NOW + timedelta(seconds=5)


def test_the_flusher_calls_flush_periodically_and_once_more_when_stopped() -> None:
    calls: list[int] = []
    called = threading.Event()

    def flush() -> None:
        calls.append(1)
        called.set()

    flusher = Flusher(flush, interval=0.01)
    flusher.ensure_running()
    flusher.ensure_running()  # one thread, however often asked
    assert called.wait(timeout=30)
    flusher.stop()
    after_stop = len(calls)

    assert after_stop >= 2
    assert [t.name for t in threading.enumerate()].count("heartbeats") == 0


def test_a_failing_flush_does_not_end_the_flusher() -> None:
    calls: list[int] = []
    second = threading.Event()

    def flush() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        second.set()

    flusher = Flusher(flush, interval=0.01)
    flusher.ensure_running()
    try:
        assert second.wait(timeout=30)
    finally:
        flusher.stop()
