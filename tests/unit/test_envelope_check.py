"""Specification of the message checks: each bad message gets one reason, a good one none."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cp.messaging.envelope_check import MessageLimits, check_raw, check_task
from tests.poison import body_bytes, envelope, headers_for

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
Q = "mycelial.cp"
LIMITS = MessageLimits(max_bytes=100_000, max_eta=3600)
REGISTERED = {"cp.heartbeat", "celery.chord_unlock"}


def raw(message: Any) -> bytes:
    return json.dumps(message).encode()


def good() -> dict[str, Any]:
    return envelope(Q, headers=headers_for("cp.heartbeat"), body=body_bytes([{"v": 1}]))


def with_props(**props: Any) -> dict[str, Any]:
    message = good()
    message["properties"].update(props)
    return message


def test_a_well_formed_envelope_is_admitted() -> None:
    message = good()
    assert check_raw(raw(message), queue=Q, limits=LIMITS) == (message, None)
    # published to the queue's own direct exchange rather than the default one: restored there too
    own = with_props(delivery_info={"exchange": Q, "routing_key": Q})
    assert check_raw(raw(own), queue=Q, limits=LIMITS) == (own, None)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        pytest.param(b"not json", "not a JSON message", id="not-json"),
        pytest.param(b"\xff\xfe", "not a JSON message", id="not-utf8"),
        pytest.param(b"[" * 100_001, "over the limit of 100000", id="too-big-before-decoding"),
        pytest.param(b"[" * 50_001 + b"]" * 50_001, "over the limit", id="deep-nesting-too-big"),
        pytest.param(b"[" * 40_000 + b"]" * 40_000, "not a JSON message", id="deep-nesting"),
        pytest.param(b"5", "envelope must be an object, got int", id="a-number"),
        pytest.param(b'{"__type__": "datetime", "__value__": "x"}', "not a JSON message", id="type-hook"),
        pytest.param(b"{}", "properties must be an object", id="empty-object"),
        pytest.param(raw(with_props(delivery_tag=5)), "delivery_tag must be a string", id="tag-not-str"),
        pytest.param(raw(with_props(delivery_info=[])), "delivery_info must be an object", id="info-list"),
        pytest.param(
            raw(with_props(delivery_info={"exchange": "", "routing_key": "mycelial.daemon.x"})),
            "is not this queue",
            id="other-routing-key",
        ),
        pytest.param(
            raw(with_props(delivery_info={"exchange": "mycelial.daemon.x", "routing_key": Q})),
            "exchange 'mycelial.daemon.x' is not this queue's",
            id="other-exchange-whose-bindings-a-daemon-writes",
        ),
        pytest.param(
            raw(with_props(delivery_info={"exchange": "celery.pidbox", "routing_key": Q})),
            "exchange 'celery.pidbox' is not this queue's",
            id="fanout-exchange-on-restore",
        ),
        pytest.param(raw(with_props(body_encoding="rot13")), "body_encoding must be 'base64'", id="encoding"),
        pytest.param(raw(with_props(priority="high")), "priority must be an integer", id="priority"),
        pytest.param(raw(good() | {"body": "%%%"}), "body is not valid base64", id="bad-base64"),
        pytest.param(raw(good() | {"headers": ["task"]}), "headers must be an object", id="headers-list"),
        pytest.param(
            raw(good() | {"headers": {**headers_for("cp.heartbeat"), "compression": "application/x-gzip"}}),
            "compressed messages are not accepted",
            id="compressed-before-kombu-decompresses",
        ),
        pytest.param(raw(good() | {"content-type": "application/x-yaml"}), "content type must be", id="yaml"),
        pytest.param(raw(good() | {"content-encoding": "binary"}), "content encoding must be", id="binary"),
    ],
)
def test_a_bad_raw_item_is_refused_with_its_reason(item: bytes, reason: str) -> None:
    envelope_, why = check_raw(item, queue=Q, limits=LIMITS)
    assert envelope_ is None
    assert why is not None and reason in why


def check(headers: Any = None, body: Any = None, **kwargs: Any) -> str | None:
    return check_task(
        headers=headers_for("cp.heartbeat") if headers is None else headers,
        body=body_bytes([{"v": 1}]) if body is None else body,
        content_type=kwargs.pop("content_type", "application/json"),
        content_encoding=kwargs.pop("content_encoding", "utf-8"),
        registered=REGISTERED,
        limits=LIMITS,
        now=NOW,
    )


def headers(**changes: Any) -> dict[str, Any]:
    result = headers_for("cp.heartbeat")
    for key, value in changes.items():
        if value is ...:
            del result[key]
        else:
            result[key] = value
    return result


def test_a_well_formed_task_message_passes() -> None:
    assert check() is None
    assert check(body=body_bytes([])) is None  # beat's tasks take no payload
    assert check(headers=headers(eta="2026-12-01T12:00:30+00:00", retries=2)) is None


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        pytest.param({"headers": ["cp.heartbeat"]}, "headers must be an object", id="headers-list"),
        pytest.param({"headers": headers(task=["cp.heartbeat"])}, "task must be a string", id="task-list"),
        pytest.param({"headers": headers(task=...)}, "task must be a string, got NoneType", id="no-task"),
        pytest.param({"headers": headers(task="cp.nothing")}, "unknown task 'cp.nothing'", id="unregistered"),
        pytest.param({"headers": headers(task="celery.chord_unlock")}, "unknown task", id="celery-builtin"),
        pytest.param({"headers": headers(id=...)}, "header id must be", id="no-id"),
        pytest.param({"headers": headers(id=7)}, "header id must be", id="id-int"),
        pytest.param({"headers": headers(id="x" * 201)}, "header id must be", id="id-long"),
        pytest.param({"headers": headers(parent_id=["x"])}, "header parent_id must be", id="parent-list"),
        pytest.param({"headers": headers(argsrepr="x" * 2000)}, "header argsrepr must be", id="argsrepr"),
        pytest.param({"headers": headers(retries="3")}, "header retries must be", id="retries-str"),
        pytest.param({"headers": headers(retries=True)}, "header retries must be", id="retries-bool"),
        pytest.param({"headers": headers(retries=-1)}, "header retries must be", id="retries-negative"),
        pytest.param({"headers": headers(timelimit=5)}, "header timelimit", id="timelimit-int"),
        pytest.param({"headers": headers(timelimit=[1])}, "header timelimit", id="timelimit-short"),
        pytest.param({"headers": headers(timelimit=["a", None])}, "header timelimit", id="timelimit-str"),
        pytest.param({"headers": headers(eta="tomorrow")}, "header eta must be an ISO 8601", id="eta-text"),
        pytest.param({"headers": headers(eta=12)}, "header eta must be", id="eta-int"),
        pytest.param({"headers": headers(eta="2026-12-02T12:00:00+00:00")}, "eta is more than", id="eta-far"),
        pytest.param({"headers": headers(expires={"a": 1})}, "header expires must be", id="expires-dict"),
        pytest.param({"headers": headers(group_index="1")}, "header group_index", id="group-index"),
        pytest.param({"headers": headers(ignore_result="no")}, "ignore_result", id="ignore-result"),
        pytest.param({"headers": headers(lang="js")}, "lang must be 'py'", id="lang"),
        pytest.param({"headers": headers(compression="application/x-gzip")}, "compressed", id="compressed"),
        pytest.param({"headers": headers(stamped_headers=["a"], stamps={"a": 1})}, "stamped", id="stamps"),
        pytest.param({"headers": headers(**{f"x{i}": i for i in range(70)})}, "headers, at most", id="many"),
        pytest.param({"content_type": "application/x-python-serialize"}, "content must be", id="pickle"),
        pytest.param({"content_encoding": "binary"}, "content must be", id="binary"),
        pytest.param({"body": b"{}"}, "body must be [args, kwargs, embed]", id="body-object"),
        pytest.param({"body": b"5"}, "body must be [args, kwargs, embed]", id="body-number"),
        pytest.param({"body": b"[[], {}]"}, "body must be [args, kwargs, embed]", id="body-two-items"),
        pytest.param({"body": b"\xff"}, "body is not JSON", id="body-not-utf8"),
        pytest.param({"body": b"[[], {}, {"}, "body is not JSON", id="body-not-json"),
        pytest.param(
            {"body": b'[[{"__type__": "datetime", "__value__": "never"}], {}, {}]'},
            "body is not JSON",
            id="body-bad-type-hook",
        ),
        pytest.param({"body": b"[{}, {}, {}]"}, "args must be a list", id="args-object"),
        pytest.param({"body": b"[[1, 2], {}, {}]"}, "at most one payload", id="two-args"),
        pytest.param({"body": b'[[], {"a": 1}, {}]'}, "kwargs must be empty", id="kwargs"),
        pytest.param({"body": b"[[], {}, []]"}, "embed must be an object", id="embed-list"),
        pytest.param({"body": b'[[], {}, {"link": 1}]'}, "embed has unknown keys: link", id="embed-unknown"),
        pytest.param({"body": b'[[], {}, {"callbacks": [{"task": "x"}]}]'}, "callbacks is", id="callback"),
        pytest.param({"body": b'[[], {}, {"chain": [{"task": "x"}]}]'}, "chain is not accepted", id="chain"),
        pytest.param({"body": b'[[], {}, {"chord": {"task": "cp.x"}}]'}, "chord is not accepted", id="chord"),
        pytest.param({"body": b"[" + b"1," * 60_000 + b"1]"}, "over the limit", id="body-too-big"),
    ],
)
def test_a_bad_task_message_is_refused_with_its_reason(message: dict[str, Any], reason: str) -> None:
    why = check(**message)
    assert why is not None and reason in why, why
