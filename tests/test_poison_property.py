"""Property: whatever is pushed onto ``mycelial.cp`` or a daemon's queue, both still consume.

Hypothesis generates raw items, envelopes, headers and bodies (each a valid message with one part
replaced by anything), publishes a batch to both queues of a real control-plane worker and a real
daemon, and after every batch a canary must go through each queue.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Broker, Stack
from tests.poison import (
    DAEMON,
    Canary,
    assert_both_queues_still_consume,
    body_bytes,
    envelope,
    headers_for,
    push,
    start_guarded_stack,
)

pytestmark = pytest.mark.integration

QUEUES = ["mycelial.cp", f"mycelial.daemon.{DAEMON}"]
TASKS = ["cp.heartbeat", "cp.run_event", "cp.probe_reply", "daemon.probe", "daemon.run_job", "celery.group"]
HEADER_KEYS = list(headers_for("x")) + ["compression", "stamped_headers", "x-extra"]
ENVELOPE_KEYS = ["body", "content-encoding", "content-type", "headers", "properties"]
PROPERTY_KEYS = ["delivery_tag", "delivery_info", "body_encoding", "priority", "correlation_id"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def valid_messages(draw: st.DrawFn, queue: str) -> dict[str, Any]:
    task = draw(st.sampled_from(TASKS))
    payload = draw(json_values)
    return envelope(queue, headers=headers_for(task), body=body_bytes([payload]))


@st.composite
def hostile_items(draw: st.DrawFn, queue: str) -> bytes:
    """A raw list item: garbage, or a valid message with one part replaced."""
    kind = draw(st.sampled_from(["raw", "json", "envelope", "property", "header", "body", "embed"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    message = draw(valid_messages(queue))
    if kind == "envelope":
        key = draw(st.sampled_from(ENVELOPE_KEYS))
        if draw(st.booleans()):
            message.pop(key)
        else:
            message[key] = draw(json_values)
    elif kind == "property":
        message["properties"][draw(st.sampled_from(PROPERTY_KEYS))] = draw(json_values)
    elif kind == "header":
        headers = copy.deepcopy(message["headers"])
        key = draw(st.sampled_from(HEADER_KEYS))
        if draw(st.booleans()):
            headers.pop(key, None)
        else:
            headers[key] = draw(json_values)
        message["headers"] = headers
    elif kind == "body":
        body = draw(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
        message["body"] = base64.b64encode(body).decode()
    else:
        embed = {
            key: draw(json_values)
            for key in draw(st.sets(st.sampled_from(["callbacks", "chain", "chord", "x"])))
        }
        message["body"] = base64.b64encode(body_bytes([{}], {}, embed)).decode()
    return json.dumps(message).encode()


@pytest.fixture(scope="module")
def guarded(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Canary]]:
    stack, canary = start_guarded_stack(tmp_path_factory.mktemp("property"), broker.fresh_url())
    yield stack, canary
    stack.stop_all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_generated_message_stops_either_consumer(
    guarded: tuple[Stack, Canary], data: st.DataObject
) -> None:
    stack, canary = guarded
    for queue in QUEUES:
        for item in data.draw(st.lists(hostile_items(queue), min_size=1, max_size=6), label=queue):
            push(canary.client, queue, item)
    assert_both_queues_still_consume(stack, canary)
