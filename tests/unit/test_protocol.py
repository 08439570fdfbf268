"""Specification of message contracts: malformed payloads are one readable MessageError."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from cp.protocol import (
    ConfigApplied,
    DaemonHello,
    Heartbeat,
    MessageError,
    RunEvent,
    RunJob,
    dump,
    parse,
)

HELLO = {"v": 1, "name": "edge-1", "software_version": "0.1.0"}
RUN_EVENT = {"run_key": "orders@1", "daemon": "edge-1", "state": "started", "at": "2025-06-02T12:00:00+00:00"}


@pytest.mark.parametrize(
    ("model", "payload", "message"),
    [
        pytest.param(
            DaemonHello, ["edge-1"], "DaemonHello: payload must be an object, got list", id="a-list"
        ),
        pytest.param(DaemonHello, "edge-1", "DaemonHello: payload must be an object, got str", id="a-string"),
        pytest.param(Heartbeat, None, "Heartbeat: payload must be an object, got NoneType", id="nothing"),
        pytest.param(
            DaemonHello,
            {"name": "edge-1"},
            "DaemonHello: software_version: Field required",
            id="missing-field",
        ),
        pytest.param(DaemonHello, {**HELLO, "v": 2}, "DaemonHello: v: Input should be 1", id="version-2"),
        pytest.param(
            DaemonHello,
            {**HELLO, "secret": "x"},
            "DaemonHello: secret: Extra inputs are not permitted",
            id="extra-field",
        ),
        pytest.param(
            DaemonHello,
            {**HELLO, "name": ""},
            "DaemonHello: name: String should have at least 1 character",
            id="empty-name",
        ),
        pytest.param(
            DaemonHello,
            {**HELLO, "labels": {"site": 1}},
            "DaemonHello: labels.site: Input should be a valid string",
            id="nested-path",
        ),
        pytest.param(
            RunEvent,
            {**RUN_EVENT, "state": "exploded"},
            "RunEvent: state: Input should be 'started', 'progress', 'succeeded', 'failed',"
            " 'timed_out' or 'cancelled'",
            id="unknown-run-state",
        ),
        pytest.param(
            RunEvent,
            {**RUN_EVENT, "rows_read": -1},
            "RunEvent: rows_read: Input should be greater than or equal to 0",
            id="negative-count",
        ),
        pytest.param(
            ConfigApplied,
            {"name": "edge-1"},
            "ConfigApplied: version: Field required; ok: Field required",
            id="two-problems-on-one-line",
        ),
    ],
)
def test_a_malformed_payload_raises_one_readable_message_error(
    model: type[BaseModel], payload: Any, message: str
) -> None:
    with pytest.raises(MessageError) as caught:
        parse(model, payload)

    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_a_payload_without_a_version_is_taken_as_version_one() -> None:
    assert parse(DaemonHello, {"name": "edge-1", "software_version": "0.1.0"}).v == 1


def test_a_valid_payload_survives_a_dump_and_parse_round_trip() -> None:
    event = parse(RunEvent, {**RUN_EVENT, "rows_read": 10, "cursor": "42"})

    assert parse(RunEvent, dump(event)) == event
    assert dump(event)["v"] == 1


def test_a_run_job_needs_a_full_pipeline_snapshot() -> None:
    with pytest.raises(MessageError, match=r"^RunJob: pipeline: Field required$"):
        parse(RunJob, {"run_key": "orders@1", "attempt": 1})


def test_a_run_event_with_a_timestamp_without_zone_is_rejected() -> None:
    with pytest.raises(MessageError, match="at"):
        parse(RunEvent, {**RUN_EVENT, "at": "2025-06-02T12:00:00"})
