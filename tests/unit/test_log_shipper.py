"""The log shipper: one batch in flight, sent again until the control plane acknowledges it, so a
broker that loses messages or goes away loses no record and delivers them in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cp.protocol import LOG_ROW_FIELDS, SEQ
from workers.logs.shipper import AcksUnsupported, LogShipper
from workers.logs.spool import LogSpool

SMALL = 4 * 64 * 2**10


class FakeControlPlane:
    """Stores what is published (unless told to lose it) and acknowledges it like cp.logs does."""

    def __init__(self) -> None:
        self.stored: dict[int, dict[str, Any]] = {}
        self.ack = 0
        self.broker_up = True
        self.lose_next = 0
        self.published: list[list[int]] = []
        self.lock = threading.Lock()

    def publish(self, payload: dict[str, Any]) -> None:
        with self.lock:
            if not self.broker_up:
                raise ConnectionError("broker away")
            self.published.append([r[SEQ] for r in payload["rows"]])
            if self.lose_next:
                self.lose_next -= 1
                return
            for r in payload["rows"]:
                self.stored.setdefault(r[SEQ], dict(zip(LOG_ROW_FIELDS, r, strict=True)))
            self.ack = max(self.ack, payload["rows"][-1][SEQ])

    def read_ack(self) -> int | None:
        with self.lock:
            if not self.broker_up:
                raise ConnectionError("broker away")
            return self.ack


def shipper(tmp_path: Path, cp: FakeControlPlane, **kwargs: Any) -> tuple[LogSpool, LogShipper]:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    options: dict[str, Any] = {
        "interval": 0.05,
        "batch_records": 50,
        "ack_timeout": 0.3,
        "max_ack_timeout": 1.0,
        "read_ack": cp.read_ack,
        "publish": cp.publish,
    }
    options.update(kwargs)
    return spool, LogShipper(spool, name="edge-1", **options)


def log_lines(spool: LogSpool, ship: LogShipper, count: int) -> list[int]:
    seqs = []
    for i in range(count):
        seqs.append(
            spool.append(
                {"ts": "2026-12-01T12:00:00+00:00", "level": "INFO", "logger": "t", "message": f"line {i}"}
            )
        )
        ship.notify()
    return seqs


def wait(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_records_arrive_in_batches_in_order_and_are_then_forgotten(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    spool, ship = shipper(tmp_path, cp)
    ship.start()
    seqs = log_lines(spool, ship, 230)
    wait(lambda: spool.acked == seqs[-1])
    ship.close(timeout=1)
    assert sorted(cp.stored) == seqs
    flat = [s for batch in cp.published for s in batch]
    assert flat == seqs  # each sent once, in order
    assert max(len(b) for b in cp.published) <= 50
    assert spool.size() == 0


def test_a_batch_the_broker_lost_is_sent_again_until_stored(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    cp.lose_next = 2
    spool, ship = shipper(tmp_path, cp)
    ship.start()
    seqs = log_lines(spool, ship, 120)
    wait(lambda: spool.acked == seqs[-1])
    ship.close(timeout=1)
    assert sorted(cp.stored) == seqs
    assert ship.resent >= 2


def test_records_logged_while_the_broker_is_away_arrive_once_it_is_back(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    spool, ship = shipper(tmp_path, cp)
    ship.start()
    before = log_lines(spool, ship, 10)
    wait(lambda: spool.acked == before[-1])
    cp.broker_up = False
    during = log_lines(spool, ship, 300)
    time.sleep(0.5)
    assert spool.acked == before[-1]
    cp.broker_up = True
    wait(lambda: spool.acked == during[-1])
    ship.close(timeout=1)
    assert sorted(cp.stored) == before + during


def test_what_is_unsent_at_close_waits_on_disk_for_the_next_process(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    cp.broker_up = False
    spool, ship = shipper(tmp_path, cp)
    ship.start()
    seqs = log_lines(spool, ship, 40)
    ship.close(timeout=0.3)
    cp.broker_up = True
    spool2, ship2 = shipper(tmp_path, cp)
    ship2.start()
    wait(lambda: spool2.acked == seqs[-1])
    ship2.close(timeout=1)
    assert sorted(cp.stored) == seqs


def test_a_batch_reports_the_records_the_full_spool_dropped(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    reported: list[int] = []

    def publish(payload: dict[str, Any]) -> None:
        reported.append(payload["dropped"])
        cp.publish(payload)

    spool, ship = shipper(tmp_path, cp, publish=publish)
    for _ in range(2_000):  # far more than the spool holds, before anything is sent
        spool.append(
            {"ts": "2026-12-01T12:00:00+00:00", "level": "INFO", "logger": "t", "message": "x" * 500}
        )
    dropped = spool.dropped
    assert dropped > 0
    ship.start()
    wait(lambda: spool.unread() == 0 and spool.acked > 0 and spool.dropped == 0)
    ship.close(timeout=1)
    assert sum(reported) == dropped and reported[0] == dropped


def test_without_acknowledgements_a_published_batch_counts_as_delivered(tmp_path: Path) -> None:
    cp = FakeControlPlane()

    def no_keys() -> int | None:
        raise AcksUnsupported

    spool, ship = shipper(tmp_path, cp, read_ack=no_keys)
    ship.start()
    seqs = log_lines(spool, ship, 20)
    wait(lambda: spool.acked == seqs[-1])
    ship.close(timeout=1)
