"""The daemon's log spool: records in order until acknowledged, bounded on disk with the oldest
dropped first and counted, numbering that survives a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.logs.spool import LogSpool

SMALL = 4 * 64 * 2**10  # the smallest spool: four segments of 64 KiB


def record(n: int, size: int = 10) -> dict[str, Any]:
    return {
        "ts": "2026-12-01T12:00:00+00:00",
        "level": "INFO",
        "logger": "t",
        "message": f"{n}:" + "x" * size,
    }


def test_records_are_read_in_order_and_forgotten_once_acknowledged(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    seqs = [spool.append(record(i)) for i in range(10)]
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    first = spool.read(limit=4, max_bytes=2**20)
    second = spool.read(limit=100, max_bytes=2**20)
    assert [r["seq"] for r in first + second] == seqs
    assert spool.unread() == 0
    spool.ack(seqs[-1])
    assert spool.size() == 0 and not list(tmp_path.glob("seg-*"))


def test_a_restart_sends_what_was_not_acknowledged_and_numbers_on(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    seqs = [spool.append(record(i)) for i in range(6)]
    spool.read(limit=6, max_bytes=2**20)
    spool.ack(seqs[2])
    spool.close()

    again = LogSpool(tmp_path, max_bytes=SMALL)
    assert [r["seq"] for r in again.read(limit=100, max_bytes=2**20)] == seqs[3:]
    assert again.append(record(7)) == seqs[-1] + 1


def test_numbering_goes_on_after_everything_was_acknowledged(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    last = [spool.append(record(i)) for i in range(3)][-1]
    spool.read(limit=3, max_bytes=2**20)
    spool.ack(last)
    spool.close()
    assert LogSpool(tmp_path, max_bytes=SMALL).append(record(9)) == last + 1


def test_a_lost_spool_numbers_past_anything_numbered_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.time() - 1  # the lost spool began a second ago, and logged 900 records since
    monkeypatch.setattr("workers.logs.spool.time.time", lambda: started)
    old = LogSpool(tmp_path / "a", max_bytes=SMALL)
    before = [old.append(record(i)) for i in range(900)][-1]
    monkeypatch.undo()
    fresh = LogSpool(tmp_path / "b", max_bytes=SMALL)  # a new, empty directory
    assert fresh.append(record(0)) > before


def test_a_line_cut_short_by_a_crash_is_cut_off(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    seqs = [spool.append(record(i)) for i in range(3)]
    spool.close()
    segment = next(tmp_path.glob("seg-*"))
    with segment.open("ab") as fh:
        fh.write(b'{"seq": 99999999999, "ts": "2026')
    again = LogSpool(tmp_path, max_bytes=SMALL)
    assert [r["seq"] for r in again.read(limit=100, max_bytes=2**20)] == seqs
    assert again.append(record(4)) == seqs[-1] + 1


def test_a_full_spool_drops_its_oldest_records_and_counts_them(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    seqs = [spool.append(record(i, size=500)) for i in range(2_000)]  # about 1 MiB: four times over
    assert spool.size() <= SMALL
    kept = spool.read(limit=10_000, max_bytes=2**30)
    assert kept and kept[-1]["seq"] == seqs[-1]
    assert [r["seq"] for r in kept] == list(range(kept[0]["seq"], seqs[-1] + 1))  # the newest, no gaps
    assert spool.dropped == len(seqs) - len(kept)
    # the count is kept until a batch that reported it is acknowledged
    spool.close()
    again = LogSpool(tmp_path, max_bytes=SMALL)
    assert again.dropped == spool.dropped
    again.read(limit=10_000, max_bytes=2**30)
    again.ack(seqs[-1], reported_dropped=again.dropped)
    assert again.dropped == 0


def test_records_handed_to_the_sender_do_not_count_as_dropped(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    [spool.append(record(i, size=500)) for i in range(100)]
    handed = spool.read(limit=100, max_bytes=2**30)
    [spool.append(record(i, size=500)) for i in range(2_000)]
    kept = spool.read(limit=10_000, max_bytes=2**30)
    assert spool.dropped == 2_100 - len(handed) - len(kept)


def test_a_batch_is_bounded_by_bytes_too(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    [spool.append(record(i, size=1_000)) for i in range(50)]
    batch = spool.read(limit=1_000, max_bytes=10_000)
    assert 1 <= len(batch) <= 11


def test_rewind_reads_again_from_the_first_unacknowledged(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path, max_bytes=SMALL)
    seqs = [spool.append(record(i)) for i in range(5)]
    spool.read(limit=5, max_bytes=2**20)
    spool.ack(seqs[1])
    spool.rewind()
    assert [r["seq"] for r in spool.read(limit=5, max_bytes=2**20)] == seqs[2:]


def test_segments_are_private(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "spool", max_bytes=SMALL)
    spool.append(record(1))
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "spool").iterdir())
    assert (tmp_path / "spool").stat().st_mode & 0o077 == 0


def test_a_spool_too_small_for_its_segments_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quarter"):
        LogSpool(tmp_path, max_bytes=100_000)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3_000)),
        st.tuples(st.just("read"), st.integers(1, 300)),
        st.tuples(st.just("ack"), st.just(0)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_every_record_is_sent_once_in_order_or_counted_as_dropped(tmp_path_factory: Any, ops: Any) -> None:
    directory = tmp_path_factory.mktemp("spool")
    spool = LogSpool(directory, max_bytes=SMALL)
    appended: list[int] = []
    delivered: list[int] = []  # read and acknowledged
    in_hand: list[int] = []
    dropped_reported = 0
    for op, arg in ops:
        if op == "append":
            for _ in range(max(1, arg // 100)):
                appended.append(spool.append(record(len(appended), size=arg)))
        elif op == "read":
            in_hand += [r["seq"] for r in spool.read(limit=arg, max_bytes=2**20)]
        elif op == "ack" and in_hand:
            dropped_reported += spool.dropped
            spool.ack(in_hand[-1], reported_dropped=spool.dropped)
            delivered += in_hand
            in_hand = []
        elif op == "restart":
            spool.close()
            spool = LogSpool(directory, max_bytes=SMALL)
            in_hand = []  # never acknowledged: read again
        assert spool.size() <= SMALL
    in_hand += [r["seq"] for r in spool.read(limit=10**6, max_bytes=2**40)]
    delivered += in_hand
    spool.ack(in_hand[-1] if in_hand else 0)
    assert delivered == sorted(set(delivered))  # in order, never twice
    assert set(delivered) <= set(appended)
    assert len(appended) - len(delivered) == dropped_reported + spool.dropped  # every loss counted
    assert all(json.loads(json.dumps(s)) == s for s in delivered)
