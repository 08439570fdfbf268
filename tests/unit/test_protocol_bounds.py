"""Every message field has a size bound; an over-limit value is one short, readable MessageError."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from cp.protocol import (
    ApplyConfig,
    ConfigApplied,
    DaemonHello,
    Heartbeat,
    LogBatch,
    MessageError,
    MessageRejected,
    Probe,
    RunEvent,
    RunJob,
    clip,
    log_row,
    parse,
)
from cp.settings import MAX_ERROR_CHARS

AT = "2026-12-01T12:00:00+00:00"
HELLO = {"v": 1, "name": "edge-1", "software_version": "0.1.0"}
BEAT = {"v": 1, "name": "edge-1", "sent_at": AT}
EVENT = {"v": 1, "run_key": "orders@1", "daemon": "edge-1", "state": "failed", "at": AT}
SPEC = {
    "name": "orders",
    "source": {"name": "shop", "kind": "sqlite"},
    "destination": {"name": "wh", "kind": "sqlite"},
    "destination_table": "orders",
}
JOB = {"v": 1, "run_key": "orders@1", "attempt": 1, "pipeline": SPEC}
LOG = {"seq": 1, "ts": AT, "level": "INFO", "logger": "x", "message": "m"}
STATE = {"daemon": "edge-1", "pipelines": []}
TEN_MB = "x" * 10_000_000


@pytest.mark.parametrize(
    ("model", "payload", "problem"),
    [
        pytest.param(
            DaemonHello, {**HELLO, "name": TEN_MB}, "name: String should match pattern", id="name-10mb"
        ),
        pytest.param(DaemonHello, {**HELLO, "name": "edge 1"}, "name: String should match", id="name-space"),
        pytest.param(DaemonHello, {**HELLO, "name": "x" * 64}, "name: String should match", id="name-64"),
        pytest.param(DaemonHello, {**HELLO, "software_version": TEN_MB}, "at most 255", id="version-text"),
        pytest.param(
            DaemonHello, {**HELLO, "labels": {f"k{i}": "v" for i in range(65)}}, "at most 64", id="labels"
        ),
        pytest.param(DaemonHello, {**HELLO, "labels": {TEN_MB: "v"}}, "at most 255", id="label-key"),
        pytest.param(DaemonHello, {**HELLO, "orphaned_task_ids": ["t"] * 1001}, "at most 1000", id="orphans"),
        pytest.param(DaemonHello, {**HELLO, "applied_config_version": -1}, "greater than or equal", id="ver"),
        pytest.param(Heartbeat, {**BEAT, "running_runs": ["r"] * 1001}, "at most 1000 items", id="runs"),
        pytest.param(
            Heartbeat, {**BEAT, "running_runs": ["a b"]}, "running_runs.0: String should", id="key-sp"
        ),
        pytest.param(Heartbeat, {**BEAT, "cpu_percent": float("nan")}, "cpu_percent", id="cpu-nan"),
        pytest.param(RunEvent, {**EVENT, "run_key": "k" * 201}, "run_key: String should match", id="run-key"),
        pytest.param(RunEvent, {**EVENT, "error": "e" * (MAX_ERROR_CHARS + 1)}, "at most 8000", id="error"),
        pytest.param(RunEvent, {**EVENT, "rows_read": 2**64}, "rows_read", id="rows"),
        pytest.param(RunEvent, {**EVENT, "cursor": TEN_MB}, "at most 65536", id="cursor"),
        pytest.param(
            ConfigApplied, {"v": 1, "name": "e", "version": 1, "ok": False, "error": TEN_MB}, "error", id="ca"
        ),
        pytest.param(
            LogBatch, {"v": 1, "name": "e", "rows": [log_row(LOG)] * 1001}, "at most 1000", id="log-batch"
        ),
        pytest.param(
            LogBatch, {"v": 1, "name": "e", "rows": [log_row({**LOG, "message": TEN_MB})]}, "8000", id="log"
        ),
        pytest.param(
            Probe, {"v": 1, "probe_id": TEN_MB, "sent_at": AT}, "probe_id: String should", id="probe"
        ),
        pytest.param(
            RunJob, {**JOB, "pipeline": {**SPEC, "key_columns": ["c"] * 1001}}, "at most 1000", id="cols"
        ),
        pytest.param(RunJob, {**JOB, "pipeline": {**SPEC, "batch_size": 0}}, "batch_size", id="batch"),
        pytest.param(
            RunJob, {**JOB, "pipeline": {**SPEC, "name": "../etc"}}, "pipeline.name", id="spec-name"
        ),
        pytest.param(
            ApplyConfig,
            {"v": 1, "version": 1, "checksum": "c", "state": {**STATE, "pipelines": [SPEC] * 10_001}},
            "at most 10000",
            id="pipelines",
        ),
        pytest.param(
            MessageRejected,
            {"v": 1, "name": "e", "queue": "q", "reason": TEN_MB, "at": AT},
            "reason",
            id="rejected-reason",
        ),
    ],
)
def test_an_over_limit_value_is_rejected_at_receipt_in_one_short_line(
    model: type[BaseModel], payload: dict[str, Any], problem: str
) -> None:
    with pytest.raises(MessageError) as caught:
        parse(model, payload)
    text = str(caught.value)
    assert problem in text
    assert "\n" not in text
    assert len(text) <= 2_000


def test_a_problem_inside_a_huge_dict_key_does_not_echo_the_key() -> None:
    with pytest.raises(MessageError) as caught:
        parse(DaemonHello, {**HELLO, "labels": {TEN_MB: 5}})
    assert len(str(caught.value)) < 300


def test_values_at_the_limits_are_accepted() -> None:
    parse(DaemonHello, {**HELLO, "name": "e" * 63, "orphaned_task_ids": ["t" * 200] * 1000})
    parse(RunEvent, {**EVENT, "error": "e" * MAX_ERROR_CHARS})


def test_clip_keeps_error_text_within_the_limit_and_says_it_was_cut() -> None:
    clipped = clip("e" * 20_000)
    assert clipped is not None and len(clipped) == MAX_ERROR_CHARS
    assert clipped.endswith("[...]")
    assert clip("short") == "short"
    assert clip(None) is None
    parse(RunEvent, {**EVENT, "error": clipped})
