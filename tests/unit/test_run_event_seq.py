"""Specification of the daemon's run-event numbering: newer events always carry higher numbers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cp.protocol import ConnectorSpec, PipelineSpec, RunEvent, RunJob
from workers.jobs import Outcome
from workers.tasks import _sender

JOB = RunJob(
    run_key="orders@1",
    attempt=2,
    pipeline=PipelineSpec(
        name="orders",
        source=ConnectorSpec(name="shop", kind="sqlite"),
        destination=ConnectorSpec(name="warehouse", kind="sqlite"),
        destination_table="orders",
    ),
)


class Outbox:
    """Stands in for the daemon: keeps what it would send to the control plane."""

    name = "edge-1"

    def __init__(self) -> None:
        self.sent: list[RunEvent] = []

    def send(self, task: str, message: BaseModel, *, argsrepr: str) -> None:
        assert isinstance(message, RunEvent)
        self.sent.append(message)


def test_each_event_of_a_delivery_is_numbered_after_the_one_before() -> None:
    outbox: Any = Outbox()
    send = _sender(outbox, JOB, delivery=1)

    for outcome in (Outcome("started"), Outcome("progress", rows_written=5), Outcome("succeeded")):
        send(outcome)

    seqs = [e.seq for e in outbox.sent]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert {e.attempt for e in outbox.sent} == {2}


def test_a_redelivered_jobs_events_are_numbered_after_every_event_of_its_earlier_delivery() -> None:
    outbox: Any = Outbox()
    first = _sender(outbox, JOB, delivery=1)
    for _ in range(10_000):
        first(Outcome("progress"))

    _sender(outbox, JOB, delivery=2)(Outcome("started"))

    *earlier, restarted = [e.seq or 0 for e in outbox.sent]
    assert restarted > max(earlier)
