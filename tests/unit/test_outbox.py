"""The daemon's outbox: messages wait while the broker is away, leave in order, coalesce where only
the newest matters, never drop what must arrive, and survive a restart of the process in a spool."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from cp.protocol import (
    CP_CONFIG_APPLIED,
    CP_CONFIG_REQUEST,
    CP_DAEMON_HELLO,
    CP_HEARTBEAT,
    CP_PROBE_REPLY,
    CP_RUN_EVENT,
)
from workers.outbox import Envelope, Outbox
from workers.runtime import envelope

WAIT = 10.0  # generous: the sender is a real thread on a loaded machine


class Broker:
    """Stands in for ``app.send_task``: down until told otherwise, then records what it gets."""

    def __init__(self, *, up: bool = False) -> None:
        self.up = threading.Event()
        if up:
            self.up.set()
        self.sent: list[Envelope] = []
        self.attempts = 0

    def publish(self, message: Envelope) -> None:
        self.attempts += 1
        if not self.up.is_set():
            raise ConnectionRefusedError(111, "Connection refused")
        self.sent.append(message)


def run_event(run_key: str, state: str, rows: int = 0) -> Envelope:
    payload = {"run_key": run_key, "daemon": "edge-1", "state": state, "rows_written": rows}
    return envelope(CP_RUN_EVENT, payload, argsrepr=f"run={run_key} state={state}")


def heartbeat(n: int) -> Envelope:
    return envelope(CP_HEARTBEAT, {"name": "edge-1", "n": n}, argsrepr="daemon=edge-1")


def outbox(broker: Broker, tmp_path: Path, *, max_pending: int = 100) -> Outbox:
    return Outbox(
        broker.publish,
        max_pending=max_pending,
        spool=tmp_path / "outbox.jsonl",
        retry_initial=0.01,
        retry_max=0.05,
    )


def wait_until_failing(broker: Broker, *, attempts: int = 2) -> None:
    for _ in range(int(WAIT / 0.01)):
        if broker.attempts >= attempts:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the sender never tried the broker")


def test_a_send_while_the_broker_is_down_neither_raises_nor_waits_and_goes_out_once_it_is_back(
    tmp_path: Path,
) -> None:
    broker = Broker()
    box = outbox(broker, tmp_path)
    box.start()
    box.put(run_event("r1", "started"))  # returns at once although publishing fails
    wait_until_failing(broker)
    assert broker.sent == []
    broker.up.set()
    assert box.flush(timeout=WAIT)
    assert [m.payload["state"] for m in broker.sent] == ["started"]
    box.close(timeout=1)


def test_progress_of_a_run_coalesces_in_place_and_the_events_of_a_run_keep_their_order(
    tmp_path: Path,
) -> None:
    broker = Broker()
    box = outbox(broker, tmp_path)
    box.start()
    box.put(run_event("r1", "started"))
    wait_until_failing(broker)
    for rows in (100, 200, 300):
        box.put(run_event("r1", "progress", rows))
        box.put(run_event("r2", "progress", rows))
    box.put(run_event("r1", "succeeded", 400))
    broker.up.set()
    assert box.flush(timeout=WAIT)
    sent = [(m.payload["run_key"], m.payload["state"], m.payload["rows_written"]) for m in broker.sent]
    assert sent == [
        ("r1", "started", 0),
        ("r1", "progress", 300),  # only the newest progress, where the first one stood
        ("r2", "progress", 300),
        ("r1", "succeeded", 400),
    ]
    box.close(timeout=1)


def test_only_the_newest_heartbeat_is_sent_after_an_outage(tmp_path: Path) -> None:
    broker = Broker()
    box = outbox(broker, tmp_path)
    box.start()
    for n in range(50):
        box.put(heartbeat(n))
    wait_until_failing(broker)
    box.put(heartbeat(50))
    broker.up.set()
    assert box.flush(timeout=WAIT)
    assert [m.payload["n"] for m in broker.sent] == [50]
    box.close(timeout=1)


def test_a_full_outbox_drops_the_oldest_droppable_message_and_never_one_that_must_arrive(
    tmp_path: Path,
) -> None:
    broker = Broker()
    box = outbox(broker, tmp_path, max_pending=10)  # not started: everything waits
    box.put(run_event("r0", "started"))
    for n in range(1, 9):
        box.put(run_event(f"r{n}", "progress", n))  # droppable, one key each
    box.put(run_event("r0", "succeeded"))  # the 10th: full now
    box.put(run_event("r9", "progress", 9))  # makes r1's progress go
    box.put(run_event("r10", "failed"))  # must arrive: makes r2's progress go
    pending = [(m.payload["run_key"], m.payload["state"]) for m in box.pending()]
    assert len(pending) == 10 and box.dropped == 2
    assert ("r1", "progress") not in pending and ("r2", "progress") not in pending
    assert pending[0] == ("r0", "started") and ("r0", "succeeded") in pending and ("r10", "failed") in pending


def test_when_only_messages_that_must_arrive_fill_it_another_one_is_kept_and_a_droppable_one_is_not(
    tmp_path: Path,
) -> None:
    box = outbox(Broker(), tmp_path, max_pending=10)
    for n in range(10):
        box.put(run_event(f"r{n}", "succeeded"))
    box.put(heartbeat(1))
    box.put(run_event("r10", "failed"))
    states = [m.payload.get("state") for m in box.pending()]
    assert len(states) == 11 and "failed" in states and box.dropped == 1


def test_close_spools_what_could_not_be_sent_and_the_next_process_sends_it_first(tmp_path: Path) -> None:
    broker = Broker()
    box = outbox(broker, tmp_path)
    box.start()
    box.put(run_event("r1", "progress", 10))
    box.put(run_event("r1", "succeeded", 20))
    wait_until_failing(broker)
    box.close(timeout=0.1)
    spool = tmp_path / "outbox.jsonl"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o600
    assert [json.loads(line)["payload"]["state"] for line in spool.read_text().splitlines()] == [
        "progress",
        "succeeded",
    ]

    broker.up.set()
    again = outbox(broker, tmp_path)
    again.start()  # the next process of the daemon
    again.put(envelope(CP_DAEMON_HELLO, {"name": "edge-1"}, argsrepr="daemon=edge-1"))
    assert again.flush(timeout=WAIT)
    assert [m.payload.get("state", m.task) for m in broker.sent] == ["progress", "succeeded", CP_DAEMON_HELLO]
    again.close(timeout=1)
    assert not spool.exists()


def test_a_spool_line_that_is_not_a_message_is_skipped_with_its_line_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = json.dumps({"task": CP_RUN_EVENT, "payload": {"state": "failed"}, "argsrepr": "run=r1"})
    (tmp_path / "outbox.jsonl").write_text(f"not json\n{good}\n", encoding="utf-8")
    box = outbox(Broker(), tmp_path)
    box.start()
    assert [m.payload for m in box.pending()] == [{"state": "failed"}]
    assert "line 1 is not a spooled message" in caplog.text
    box.close(timeout=0)


def test_a_message_the_broker_refuses_for_what_it_is_is_dropped_and_does_not_block_the_rest(
    tmp_path: Path,
) -> None:
    sent: list[Envelope] = []

    def publish(message: Envelope) -> None:
        if message.payload.get("bad"):
            raise TypeError("Object of type bytes is not JSON serializable")
        sent.append(message)

    box = Outbox(publish, max_pending=10, spool=tmp_path / "o.jsonl", retry_initial=0.01)
    box.start()
    box.put(Envelope(CP_RUN_EVENT, {"bad": True}, "run=r1"))
    box.put(Envelope(CP_RUN_EVENT, {"state": "succeeded"}, "run=r2"))
    assert box.flush(timeout=WAIT)
    assert [m.payload for m in sent] == [{"state": "succeeded"}]
    box.close(timeout=1)


@pytest.mark.parametrize(
    ("task", "payload", "key", "droppable"),
    [
        (CP_HEARTBEAT, {"name": "edge-1"}, CP_HEARTBEAT, True),
        (CP_PROBE_REPLY, {"probe_id": "p"}, CP_PROBE_REPLY, True),
        (CP_CONFIG_REQUEST, {"name": "edge-1"}, CP_CONFIG_REQUEST, True),
        (CP_RUN_EVENT, {"run_key": "r1", "state": "progress"}, "progress r1", True),
        (CP_RUN_EVENT, {"run_key": "r1", "state": "started"}, None, False),
        (CP_RUN_EVENT, {"run_key": "r1", "state": "succeeded"}, None, False),
        (CP_RUN_EVENT, {"run_key": "r1", "state": "cancelled"}, None, False),
        (CP_DAEMON_HELLO, {"name": "edge-1"}, None, False),
        (CP_CONFIG_APPLIED, {"version": 3}, None, False),
    ],
)
def test_the_daemon_coalesces_and_drops_only_messages_of_which_the_newest_is_enough(
    task: str, payload: dict[str, object], key: str | None, droppable: bool
) -> None:
    made = envelope(task, payload, argsrepr="x")
    assert (made.key, made.droppable) == (key, droppable)
