"""The oldest message's issue time, read from the end of a raw kombu Redis message, bounded."""

from __future__ import annotations

import base64
from typing import Any

import fakeredis
import pytest
from kombu import Connection
from kombu.utils.json import dumps

from cp.metrics.queues import QueueReading, combine, issued_at, parse_reply, queue_keys, queue_script
from cp.security.envelope import Auth

AT_MS = 1_764_000_000_123


def raw_message(*, at: Any = AT_MS, body: bytes = b'[[{"x": 1}], {}, {}]', auth: bool = True) -> bytes:
    """A message as kombu's Redis transport stores it (LPUSH of the JSON of prepare_message)."""
    headers: dict[str, Any] = {"task": "daemon.run_job", "id": "t-1", "argsrepr": 'say "mycelial_auth": {'}
    if auth:
        header = Auth(by="cp", key="0" * 16, at=0, exp=AT_MS + 60_000, nonce="n", sig="s").as_header()
        header["at"] = at
        headers["mycelial_auth"] = header
    with Connection("memory://") as connection:
        message = connection.default_channel.prepare_message(
            base64.b64encode(body).decode(),
            0,
            "application/json",
            "utf-8",
            headers,
            {"body_encoding": "base64"},
        )
    message["properties"]["delivery_tag"] = "tag-1"
    return dumps(message).encode()


def test_a_whole_message_gives_its_signed_issue_time_in_seconds() -> None:
    assert issued_at(raw_message()) == AT_MS / 1000


def test_the_end_of_a_message_too_long_to_read_still_holds_its_envelope() -> None:
    raw = raw_message(body=b"x" * 200_000)
    end = raw[-4_096:]
    assert not end.startswith(b"{")  # cut inside the body: not JSON any more
    assert issued_at(end) == AT_MS / 1000


@pytest.mark.parametrize(
    "at",
    ["1764000000123", True, -5, 0, 1.5, None, {"x": 1}],
    ids=["text", "bool", "neg", "zero", "float", "null", "obj"],
)
def test_an_envelope_time_that_is_not_a_positive_integer_gives_no_time(at: Any) -> None:
    assert issued_at(raw_message(at=at)) is None


def test_a_message_without_envelope_or_not_json_gives_no_time() -> None:
    assert issued_at(raw_message(auth=False)) is None
    assert issued_at(b"") is None
    assert issued_at(b"\xff\xfe not json at all") is None
    # text that only quotes the header's name inside a string is not a header
    assert issued_at(b'"argsrepr": "say \\"mycelial_auth\\": {\\"at\\": 5}"}') is None


def test_a_queue_is_as_deep_as_all_its_priority_lists_and_as_old_as_their_oldest_tail() -> None:
    older, newer = raw_message(at=AT_MS - 5_000), raw_message(at=AT_MS)
    reading = combine([2, 0, 1, 0], [newer, b"", older, b""])
    assert reading == QueueReading(depth=3, oldest_issued_at=(AT_MS - 5_000) / 1000)
    assert combine([0, 0, 0, 0], [b"", b"", b"", b""]) == QueueReading(depth=0, oldest_issued_at=None)


def test_one_script_reads_every_list_and_returns_only_the_last_bytes_of_each_tail() -> None:
    client = fakeredis.FakeRedis()
    big = raw_message(at=AT_MS - 9_000, body=b"y" * 100_000)
    client.lpush(queue_keys("dead")[0], big)  # the oldest: pushed first, at the tail
    client.lpush(queue_keys("dead")[0], raw_message(at=AT_MS))
    client.lpush(queue_keys("dead")[3], raw_message(at=AT_MS - 1_000))
    script = queue_script(["dead", "idle"], peek_bytes=2_048)
    assert script is not None
    reply = client.eval(*script)
    assert all(len(item) <= 2_048 for item in reply[1::2])
    readings = parse_reply(["dead", "idle"], reply)
    assert readings["dead"] == QueueReading(depth=3, oldest_issued_at=(AT_MS - 9_000) / 1000)
    assert readings["idle"] == QueueReading(depth=0, oldest_issued_at=None)
    assert queue_script([], peek_bytes=2_048) is None
