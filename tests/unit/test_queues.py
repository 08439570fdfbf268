"""Specification of the control plane's queues: housekeeping is routed apart from daemon messages."""

from __future__ import annotations

import pytest

from beat_schedule import beat_schedule
from cp.celery_app import CP_CONTROL_QUEUE, CP_WORKER_QUEUES, make_celery, worker_argv
from cp.protocol import (
    CP_CHECK_DAEMON_HEALTH,
    CP_DELIVER_NOTICES,
    CP_HEARTBEAT,
    CP_PURGE_OLD_RECORDS,
    CP_QUEUE,
    CP_SEND_PROBES,
)
from cp.settings import Settings


@pytest.mark.parametrize(
    ("task", "queue"),
    [
        (CP_CHECK_DAEMON_HEALTH, CP_CONTROL_QUEUE),
        (CP_SEND_PROBES, CP_CONTROL_QUEUE),
        (CP_PURGE_OLD_RECORDS, CP_CONTROL_QUEUE),
        (CP_DELIVER_NOTICES, CP_CONTROL_QUEUE),
        (CP_HEARTBEAT, CP_QUEUE),
        ("cp.run_event", CP_QUEUE),
    ],
)
def test_housekeeping_tasks_are_routed_to_the_control_queue_and_daemon_messages_are_not(
    task: str, queue: str
) -> None:
    app = make_celery(Settings(), url="memory://")

    route = app.amqp.router.route({}, task)

    assert route["queue"].name == queue


def test_each_queue_is_bound_to_its_own_exchange_and_key_so_no_message_is_copied_to_both() -> None:
    app = make_celery(Settings(), url="memory://")
    queues = app.amqp.queues

    bindings = {
        (queues[name].exchange.name, queues[name].routing_key) for name in (CP_QUEUE, CP_CONTROL_QUEUE)
    }

    assert bindings == {(CP_QUEUE, CP_QUEUE), (CP_CONTROL_QUEUE, CP_CONTROL_QUEUE)}


def test_every_beat_entry_goes_to_the_control_queue() -> None:
    assert {entry["options"]["queue"] for entry in beat_schedule(Settings()).values()} == {CP_CONTROL_QUEUE}


def test_a_control_plane_worker_consumes_the_control_queue_beside_mycelial_cp() -> None:
    argv = worker_argv(
        queues=CP_WORKER_QUEUES, hostname="cp@h", pool="threads", concurrency=4, loglevel="info"
    )

    assert f"--queues={CP_CONTROL_QUEUE},{CP_QUEUE}" in argv
