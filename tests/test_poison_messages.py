"""No message stops a consumer: each of these once crash-looped the control-plane worker or a daemon.

A real control-plane worker and a real daemon, started through the CLI, share one Redis database;
the messages are pushed with redis-py as kombu's Redis transport stores them. After each one a
canary (a probe reply onto ``mycelial.cp``, a probe onto the daemon's queue) must still go through.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, Stack, wait_for
from tests.poison import (
    DAEMON,
    Canary,
    assert_both_queues_still_consume,
    body_bytes,
    envelope,
    headers_for,
    heartbeat_payload,
    push,
    sign_as_control_plane,
    start_guarded_stack,
    task_message,
)

pytestmark = pytest.mark.integration

CP = "mycelial.cp"
DQ = f"mycelial.daemon.{DAEMON}"
TASK = {CP: "cp.heartbeat", DQ: "daemon.probe"}


@pytest.fixture(scope="module")
def guarded_stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Canary]]:
    stack, canary = start_guarded_stack(tmp_path_factory.mktemp("guarded"), broker.fresh_url())
    yield stack, canary
    stack.stop_all()


@pytest.fixture
def guarded(guarded_stack: tuple[Stack, Canary]) -> tuple[Stack, Canary]:
    # hand-made messages are signed with this stack's control-plane key (a test in between may
    # have started a stack of its own and signed with that one's)
    sign_as_control_plane(guarded_stack[0].home)
    return guarded_stack


def without_id(queue: str) -> dict[str, Any]:
    headers = headers_for(TASK[queue])
    del headers["id"]
    return envelope(queue, headers=headers, body=body_bytes([heartbeat_payload(DAEMON)]))


DEFECTS: dict[str, tuple[Callable[[str], Any], str]] = {
    "task header is a list": (
        lambda q: envelope(q, headers=headers_for([TASK[q]]), body=body_bytes([{}])),
        "header task must be a string",
    ),
    "body is an empty object": (
        lambda q: envelope(q, headers=headers_for(TASK[q]), body=b"{}"),
        "body must be [args, kwargs, embed]",
    ),
    "body is a number": (
        lambda q: envelope(q, headers=headers_for(TASK[q]), body=b"5"),
        "body must be [args, kwargs, embed]",
    ),
    "body is a two-item list": (
        lambda q: envelope(q, headers=headers_for(TASK[q]), body=b"[[], {}]"),
        "body must be [args, kwargs, embed]",
    ),
    "id header is missing": (without_id, "header id must be"),
    "raw push is not JSON": (lambda q: "this is not json {", "not a JSON message"),
}


@pytest.mark.parametrize("queue", [CP, DQ], ids=["cp", "daemon"])
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_malformed_message_is_dead_lettered_and_the_next_valid_one_is_consumed(
    guarded: tuple[Stack, Canary], defect: str, queue: str
) -> None:
    stack, canary = guarded
    build, reason = DEFECTS[defect]
    before = len(canary.dead_letters(queue))
    push(canary.client, queue, build(queue))
    assert_both_queues_still_consume(stack, canary)
    letters = canary.dead_letters(queue)
    assert len(letters) == before + 1, letters[:3]
    assert reason in letters[0]["reason"]
    assert letters[0]["queue"] == queue
    assert canary.client.llen(queue) == 0


def test_a_forged_chain_is_refused_and_the_task_it_names_never_runs(guarded: tuple[Stack, Canary]) -> None:
    stack, canary = guarded
    hello = {"v": 1, "name": "forged-by-chain", "software_version": "0"}
    # immutable: Celery would call it with exactly these args, not the heartbeat's result prepended
    chained = {"task": "cp.daemon_hello", "args": [hello], "kwargs": {}, "options": {}, "immutable": True}
    embed = {"callbacks": [chained], "errbacks": None, "chain": [chained], "chord": None}
    body = body_bytes([heartbeat_payload(DAEMON)], {}, embed)
    message = envelope(CP, headers=headers_for("cp.heartbeat"), body=body)
    push(canary.client, CP, message)
    assert_both_queues_still_consume(stack, canary)
    assert_both_queues_still_consume(stack, canary)  # a callback would have been published by now
    assert stack.daemon("forged-by-chain") is None
    assert "no canvas" in canary.dead_letters(CP)[0]["reason"]


def test_celery_built_in_tasks_are_not_accepted_from_the_broker(guarded: tuple[Stack, Canary]) -> None:
    stack, canary = guarded
    push(canary.client, CP, task_message(CP, "celery.chord_unlock", {}))
    assert_both_queues_still_consume(stack, canary)
    assert "unknown task 'celery.chord_unlock'" in canary.dead_letters(CP)[0]["reason"]


def test_an_oversized_message_is_rejected_before_it_is_decoded(guarded: tuple[Stack, Canary]) -> None:
    stack, canary = guarded
    huge = "x" * (9 * 2**20)  # over the default 8 MiB MYCELIAL_MESSAGE_MAX_BYTES
    push(canary.client, DQ, task_message(DQ, "daemon.probe", {"v": 1, "probe_id": huge}))
    assert_both_queues_still_consume(stack, canary)
    letter = canary.dead_letters(DQ)[0]
    assert "over the limit of 8388608" in letter["reason"]
    assert len(letter["copy"]) <= 4096


def test_a_rejection_is_recorded_by_the_cp_and_reported_by_the_daemon(broker: Broker, tmp_path: Path) -> None:
    stack, canary = start_guarded_stack(tmp_path, broker.fresh_url())
    try:
        push(canary.client, CP, envelope(CP, headers=headers_for("cp.heartbeat"), body=b"[1, 2]"))
        pickle = "application/x-python-serialize"
        pickled = envelope(DQ, headers=headers_for("daemon.probe"), content_type=pickle)
        push(canary.client, DQ, pickled)
        push(canary.client, DQ, task_message(DQ, "daemon.probe", {"v": 1, "probe_id": "no time"}))

        def both_recorded() -> list[tuple[Any, ...]]:
            with sqlite3.connect(stack.home / "cp.db") as conn:
                found = conn.execute(
                    "SELECT daemon, reason FROM daemonevent WHERE kind = 'message_rejected'"
                ).fetchall()
            cp_side = [e for e in found if e[0] is None and "queue mycelial.cp: body must be" in e[1]]
            daemon_side = [e for e in found if e[0] == DAEMON and f"queue {DQ}: content type must be" in e[1]]
            # a well-formed message whose payload breaks its contract is reported too
            contract = [
                e for e in found if e[0] == DAEMON and "daemon.probe: queue" in e[1] and "Probe:" in e[1]
            ]
            return found if cp_side and daemon_side and contract else []

        wait_for(both_recorded, timeout=30, what="rejection events from both sides", stack=stack)
        assert_both_queues_still_consume(stack, canary)
    finally:
        stack.stop_all()


def test_a_body_that_is_not_utf8_once_decoded_is_rejected(guarded: tuple[Stack, Canary]) -> None:
    stack, canary = guarded
    message = envelope(CP, headers=headers_for("cp.heartbeat"))
    message["body"] = base64.b64encode(b"\xff\xfe[[], {}, {}]").decode()
    push(canary.client, CP, json.dumps(message))
    assert_both_queues_still_consume(stack, canary)
    assert "body is not JSON" in canary.dead_letters(CP)[0]["reason"]
