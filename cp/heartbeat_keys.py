"""Heartbeats read from the daemons' keys (workers/heartbeat_key.py writes them).

Every ``heartbeat_flush_interval`` one control-plane worker (the holder of a short lease, so
several workers do not read and write the same heartbeats) reads every declared daemon's key
in one pipelined round trip: at most ``HEARTBEAT_MAX_BYTES`` of its value and its remaining
time to live. A value equal to the one read last time is skipped unparsed, so the cost follows
the heartbeats that arrived, not the number of daemons. When a heartbeat arrived is taken from
the key's time to live, by the broker's clock: a control plane that restarts does not take an
old key for a new heartbeat, and a daemon's own clock never decides it.

Every value is hostile until checked: too long, no expiry or a longer one than the protocol's,
not JSON, not signed by the daemon's current key (or replayed), not a ``Heartbeat``, or speaking
for another daemon than its key's is rejected once (until the value changes), like a bad message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cp.heartbeats import ReceivedHeartbeat
from cp.protocol import (
    HEARTBEAT_KEY_TTL_SECONDS,
    HEARTBEAT_MAX_BYTES,
    Heartbeat,
    MessageError,
    heartbeat_key,
    parse,
)
from cp.security.envelope import AlreadyAccepted

READER_LEASE_KEY = "mycelial.cp.heartbeat-reader"
_TTL_MS = HEARTBEAT_KEY_TTL_SECONDS * 1000

# take the lease when nobody holds it, extend it when we do, in one step
_LEASE_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class RejectedKey:
    name: str
    reason: str
    kind: str = "message_rejected"  # or "security": not authenticated


class NotAuthenticated(MessageError):
    """A heartbeat key whose value is well-formed but not signed by the daemon's current key."""


# checks that the envelope of a key's value authenticates its payload for that daemon, raising
# MessageError (or AuthError, a ValueError too) when not: cp/tasks.py gives the real one
Verify = Callable[[str, object, object], None]


def decode(name: str, raw: bytes, pttl_ms: int, *, now: datetime, verify: Verify) -> ReceivedHeartbeat:
    """The heartbeat in ``name``'s key, received when the key was written; MessageError if bad.

    The value is ``{"auth": <signed envelope>, "beat": <Heartbeat>}``, signed by the daemon for
    task ``cp.heartbeat``, task id its nonce, queue the key's name (docs/protocol.md).
    """
    if len(raw) > HEARTBEAT_MAX_BYTES:
        raise MessageError(f"heartbeat key holds more than {HEARTBEAT_MAX_BYTES} bytes")
    if pttl_ms < 0:
        raise MessageError("heartbeat key has no expiry")
    if pttl_ms > _TTL_MS:
        raise MessageError(f"heartbeat key expires later than {HEARTBEAT_KEY_TTL_SECONDS} s")
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"heartbeat key is not JSON: {str(exc)[:80]}") from None
    if not isinstance(payload, dict) or set(payload) != {"auth", "beat"}:
        raise MessageError("heartbeat key must hold an object with auth and beat")
    try:
        verify(name, payload["auth"], payload["beat"])
    except ValueError as exc:
        raise NotAuthenticated(f"heartbeat not authenticated: {exc}") from None
    beat = parse(Heartbeat, payload["beat"])
    if beat.name != name:
        raise MessageError(f"heartbeat in the key of {name} speaks for {beat.name}")
    return ReceivedHeartbeat(beat=beat, received_at=now - timedelta(milliseconds=_TTL_MS - pttl_ms))


def read_keys(client: Any, names: Sequence[str]) -> list[tuple[bytes | Exception, int]]:
    """For each daemon its key's value (at most one byte past the limit) and milliseconds to live
    (-2: no key), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.getrange(heartbeat_key(name), 0, HEARTBEAT_MAX_BYTES)
        pipe.pttl(heartbeat_key(name))
    replies = pipe.execute(raise_on_error=False)
    return [(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]


class HeartbeatKeyReader:
    """What changed in the daemons' keys since the last ``read``."""

    def __init__(
        self, read: Callable[[Sequence[str]], list[tuple[bytes | Exception, int]]], *, verify: Verify
    ) -> None:
        self._read = read
        self._verify = verify
        self._seen: dict[str, bytes] = {}

    def read(
        self, names: Sequence[str], *, now: datetime
    ) -> tuple[list[ReceivedHeartbeat], list[RejectedKey]]:
        received: list[ReceivedHeartbeat] = []
        rejected: list[RejectedKey] = []
        replies = self._read(names)
        seen: dict[str, bytes] = {}
        for name, (raw, pttl) in zip(names, replies, strict=True):
            if isinstance(raw, Exception):  # WRONGTYPE: something that is not a string
                if isinstance(pttl, int) and pttl != -2 and self._seen.get(name) != b"\0wrongtype":
                    rejected.append(RejectedKey(name, "heartbeat key is not a string"))
                seen[name] = b"\0wrongtype"
                continue
            if not isinstance(pttl, int) or pttl == -2 or not raw:
                continue  # no key: the daemon has not beaten lately
            seen[name] = raw
            if self._seen.get(name) == raw:
                continue
            try:
                received.append(decode(name, raw, pttl, now=now, verify=self._verify))
            except AlreadyAccepted:
                continue
            except NotAuthenticated as exc:
                rejected.append(RejectedKey(name, str(exc), kind="security"))
            except MessageError as exc:
                rejected.append(RejectedKey(name, str(exc)))
        self._seen = seen
        return received, rejected

    def forget(self) -> None:
        """Read everything again next time (this worker lost the lease and may get it back)."""
        self._seen = {}


class ReaderLease:
    """One worker reads heartbeat keys at a time; the lease passes on if its holder stops."""

    def __init__(self, *, ttl_seconds: float, key: str = READER_LEASE_KEY) -> None:
        self.key = key
        self.holder = uuid.uuid4().hex
        self.ttl_ms = max(1, int(ttl_seconds * 1000))

    def hold(self, client: Any) -> bool:
        return bool(client.eval(_LEASE_SCRIPT, 1, self.key, self.holder, self.ttl_ms))
