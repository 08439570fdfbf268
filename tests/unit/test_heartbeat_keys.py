"""Heartbeat keys (cp/heartbeat_keys.py, workers/heartbeat_key.py): a daemon overwrites its own key,
the control plane reads what changed, by the broker's clock, and rejects every bad value once."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

import fakeredis
import pytest

from cp.heartbeat_intake import HeartbeatIntake
from cp.heartbeat_keys import HeartbeatKeyReader, ReaderLease, read_keys
from cp.models import utcnow
from cp.protocol import (
    CP_HEARTBEAT,
    HEARTBEAT_KEY_TTL_SECONDS,
    HEARTBEAT_MAX_BYTES,
    HEARTBEAT_TASK_ID,
    Heartbeat,
    heartbeat_key,
)
from cp.security.cp_auth import ControlPlaneAuthenticator, DaemonKeys, DaemonKeyView, Nonces
from cp.security.envelope import daemon_sender
from cp.security.keys import Identity
from cp.security.signer import Signer
from workers.heartbeat_key import HeartbeatWriter

TTL_MS = HEARTBEAT_KEY_TTL_SECONDS * 1000
KEYS = {name: Identity.generate() for name in ("edge-1", "edge-2", "edge-3")}


def beat(name: str, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "name": name, "sent_at": utcnow().isoformat(), "running_runs": [], **extra}


def envelope(key: str, payload: object, *, signed_by: str) -> dict[str, Any]:
    signer = Signer(lambda: KEYS[signed_by], by=daemon_sender(signed_by), window_s=300)
    return signer.header(task=CP_HEARTBEAT, task_id=HEARTBEAT_TASK_ID, queue=key, payload=payload)


def signed(name: str, payload: object, *, signed_by: str | None = None) -> bytes:
    """A key's value as the daemon ``signed_by`` (default: the key's own) writes it."""
    auth = envelope(heartbeat_key(name), payload, signed_by=signed_by or name)
    return json.dumps({"auth": auth, "beat": payload}).encode()


def writer(client: fakeredis.FakeRedis, name: str = "edge-1") -> HeartbeatWriter:
    return HeartbeatWriter(
        lambda: (None, client), sign=lambda key, payload: envelope(key, payload, signed_by=name)
    )


def authenticator() -> ControlPlaneAuthenticator:
    def load(name: str) -> DaemonKeyView | None:
        key = KEYS.get(name)
        return DaemonKeyView(key_id=key.key_id, public=key.public, revoked=False) if key else None

    return ControlPlaneAuthenticator(
        daemon_keys=DaemonKeys(load, ttl=0),
        cp_keys=dict,
        nonces=Nonces(),
        window_s=300,
        daemon_queues=frozenset({"mycelial.cp"}),
    )


def reader(client: fakeredis.FakeRedis) -> HeartbeatKeyReader:
    auth = authenticator()
    return HeartbeatKeyReader(
        lambda names: read_keys(client, names),
        verify=auth.verify_heartbeat,
    )


def test_a_written_heartbeat_is_read_once_and_dated_by_the_keys_time_to_live() -> None:
    client = fakeredis.FakeRedis()
    daemon = writer(client)
    sent = Heartbeat.model_validate(beat("edge-1", running_runs=["r1"]))
    assert daemon.write(sent)
    client.pexpire(heartbeat_key("edge-1"), TTL_MS - 3_000)  # as if written three seconds ago
    keys = reader(client)
    now = utcnow()
    received, rejected = keys.read(["edge-1", "edge-2"], now=now)
    assert rejected == []
    assert [r.beat for r in received] == [sent]
    assert abs((now - received[0].received_at) - timedelta(seconds=3)) < timedelta(milliseconds=50)
    # nothing new: nothing read; a new heartbeat: read
    assert keys.read(["edge-1", "edge-2"], now=utcnow()) == ([], [])
    daemon.write(Heartbeat.model_validate(beat("edge-1")))
    assert len(keys.read(["edge-1"], now=utcnow())[0]) == 1


def test_a_reader_that_forgot_skips_what_it_accepted_and_refuses_an_older_heartbeat() -> None:
    client = fakeredis.FakeRedis()
    older = signed("edge-1", beat("edge-1"))
    time.sleep(0.01)
    client.set(heartbeat_key("edge-1"), signed("edge-1", beat("edge-1")), px=TTL_MS)
    keys = reader(client)
    assert len(keys.read(["edge-1"], now=utcnow())[0]) == 1
    keys.forget()
    # read again: the same heartbeat, accepted already, changes nothing and is no attack
    assert keys.read(["edge-1"], now=utcnow()) == ([], [])
    # an older one written back is a replay
    client.set(heartbeat_key("edge-1"), older, px=TTL_MS)
    received, rejected = keys.read(["edge-1"], now=utcnow())
    assert received == [] and "replayed heartbeat of edge-1" in rejected[0].reason


@pytest.mark.parametrize(
    ("value", "ttl_ms", "reason"),
    [
        (b"x" * (HEARTBEAT_MAX_BYTES + 10), TTL_MS, "more than"),
        (signed("edge-1", beat("edge-1")), None, "no expiry"),
        (signed("edge-1", beat("edge-1")), TTL_MS * 50, "expires later than"),
        (b"\xff\xfe not utf-8", TTL_MS, "not JSON"),
        (b"{nope", TTL_MS, "not JSON"),
        (b"5", TTL_MS, "must hold an object"),
        (json.dumps(beat("edge-1")).encode(), TTL_MS, "must hold an object with auth and beat"),
        (json.dumps({"auth": None, "beat": beat("edge-1")}).encode(), TTL_MS, "unsigned"),
        (signed("edge-1", beat("edge-1"), signed_by="edge-2"), TTL_MS, "signed by daemon:edge-2"),
        (signed("edge-1", beat("edge-2")), TTL_MS, "in the name of 'edge-2'"),
        (
            json.dumps(
                {
                    "auth": envelope(heartbeat_key("edge-1"), beat("edge-1"), signed_by="edge-1"),
                    "beat": beat("edge-1", cpu_percent=99.0),
                }
            ).encode(),
            TTL_MS,
            "bad signature",
        ),
        (signed("edge-1", beat("edge-1", cpu_percent=-1)), TTL_MS, "cpu_percent"),
        (signed("edge-1", beat("edge-1", extra="x")), TTL_MS, "extra"),
        (signed("edge-1", beat("edge-1", running_runs=["r"] * 5_000)), TTL_MS, "running_runs"),
    ],
    ids=[
        "too-long",
        "no-expiry",
        "long-expiry",
        "not-utf8",
        "not-json",
        "not-object",
        "unwrapped",
        "unsigned",
        "signed-by-another-daemon",
        "other-daemon",
        "tampered",
        "bad-field",
        "extra-field",
        "too-many-runs",
    ],
)
def test_a_bad_value_is_rejected_once_and_the_other_daemons_are_still_read(
    value: bytes, ttl_ms: int | None, reason: str
) -> None:
    client = fakeredis.FakeRedis()
    client.set(heartbeat_key("edge-1"), value, px=ttl_ms)
    client.set(heartbeat_key("edge-3"), signed("edge-3", beat("edge-3")), px=TTL_MS)
    keys = reader(client)
    received, rejected = keys.read(["edge-1", "edge-3"], now=utcnow())
    assert [r.beat.name for r in received] == ["edge-3"]
    assert [r.name for r in rejected] == ["edge-1"]
    assert reason in rejected[0].reason
    assert len(rejected[0].reason) < 300
    assert keys.read(["edge-1", "edge-3"], now=utcnow()) == ([], [])  # once, until the value changes


def test_a_key_that_is_not_a_string_is_rejected_once() -> None:
    client = fakeredis.FakeRedis()
    client.rpush(heartbeat_key("edge-1"), "a", "b")
    keys = reader(client)
    received, rejected = keys.read(["edge-1"], now=utcnow())
    assert received == [] and [r.reason for r in rejected] == ["heartbeat key is not a string"]
    assert keys.read(["edge-1"], now=utcnow()) == ([], [])


def test_one_worker_at_a_time_holds_the_reader_lease_and_it_passes_on_when_the_holder_stops() -> None:
    client = fakeredis.FakeRedis()
    first, second = ReaderLease(ttl_seconds=0.2), ReaderLease(ttl_seconds=0.2)
    assert first.hold(client)
    assert not second.hold(client)
    assert first.hold(client)  # extended
    time.sleep(0.3)  # the first stopped extending it
    assert second.hold(client)
    assert not first.hold(client)


def test_a_heartbeat_the_broker_refuses_is_logged_once_per_outage_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    server.connected = False  # fakeredis: every command raises ConnectionError
    connects: list[int] = []

    def connect() -> tuple[None, fakeredis.FakeRedis]:
        connects.append(1)
        return None, client

    daemon = HeartbeatWriter(connect)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert daemon.write(Heartbeat.model_validate(beat("edge-1")))
    assert len([r for r in caplog.records if "not delivered" in r.message]) == 1
    assert len(connects) == 3  # each attempt makes a new connection
    server.connected = True
    assert daemon.write(Heartbeat.model_validate(beat("edge-1")))
    assert client.exists(heartbeat_key("edge-1"))


def test_a_broker_without_keys_makes_the_writer_say_so() -> None:
    daemon = HeartbeatWriter(lambda: None)
    assert not daemon.write(Heartbeat.model_validate(beat("edge-1")))


def test_the_intake_reads_only_while_it_holds_the_lease_and_survives_a_broken_broker() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    auth = authenticator()

    def intake() -> HeartbeatIntake:
        return HeartbeatIntake(
            connect=lambda: (None, client),
            declared_names=lambda: ["edge-1"],
            lease_seconds=5,
            verify=auth.verify_heartbeat,
        )

    one, two = intake(), intake()
    daemon = writer(client)
    daemon.write(Heartbeat.model_validate(beat("edge-1")))
    assert len(one.gather()[0]) == 1
    assert two.gather() == ([], [])
    server.connected = False
    assert one.gather() == ([], [])  # logged, not raised
    server.connected = True
    daemon.write(Heartbeat.model_validate(beat("edge-1")))
    assert len(one.gather()[0]) == 1
