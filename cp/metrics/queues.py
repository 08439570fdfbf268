"""Depth and oldest message of each daemon queue, read from Redis in one round trip.

kombu's Redis transport LPUSHes a message onto the queue's list (or a priority sibling) and its
consumers BRPOP the other end, so the oldest message of a list is its tail (LINDEX -1). One Lua
script returns, for every queue, the length of each list and the last ``peek_bytes`` of its tail
item: a huge message is never read whole. The time a message was issued comes from our signed
envelope (``mycelial_auth.at``, cp/security/envelope.py); kombu's Redis messages carry none. kombu
writes the body first and the headers after it, so the end of a message holds the envelope.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cp.protocol import daemon_queue
from cp.queue_depth import PRIORITY_SUFFIXES

PEEK_BYTES_DEFAULT = 16_384
# the envelope's object, found in the end of a message cut short: what comes before it is the
# base64 body (no quotes) and JSON text, where a quote inside a string is escaped, so an unescaped
# quote before the key is the header's own
_AUTH_KEY = re.compile(rb'"mycelial_auth"\s*:\s*\{')
_AUTH_OBJECT_MAX = 1_024

# KEYS: every list; ARGV[1]: last bytes of each tail item returned. Reply: LLEN, end, LLEN, end...
_READ_SCRIPT = """
local out = {}
local cap = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local n = redis.call('LLEN', key)
  out[#out + 1] = n
  if n > 0 then
    local tail = redis.call('LINDEX', key, -1)
    out[#out + 1] = string.sub(tail or '', -cap)
  else
    out[#out + 1] = ''
  end
end
return out
"""


@dataclass(frozen=True)
class QueueReading:
    depth: int
    oldest_issued_at: float | None  # unix seconds; None for an empty queue or an unreadable message


def issued_at(end: bytes) -> float | None:
    """When the message whose last bytes are ``end`` (or all of it) was signed, in unix seconds;
    None when they hold no valid envelope time."""
    if not end:
        return None
    header: Any = None
    try:
        header = json.loads(end).get("headers", {}).get("mycelial_auth")
    except (ValueError, AttributeError):  # cut short, or not kombu's JSON: look for the header itself
        match = _AUTH_KEY.search(end)
        if match is not None:
            start = match.end() - 1
            chunk = end[start : start + _AUTH_OBJECT_MAX].decode("utf-8", "replace")
            try:
                header, _ = json.JSONDecoder().raw_decode(chunk)
            except ValueError:
                header = None
    at = header.get("at") if isinstance(header, dict) else None
    if isinstance(at, bool) or not isinstance(at, int) or at <= 0:
        return None
    return at / 1000.0


def queue_keys(name: str) -> list[str]:
    """The Redis lists of daemon ``name``'s queue: the plain one and its priority siblings."""
    return [daemon_queue(name) + suffix for suffix in PRIORITY_SUFFIXES]


def combine(depths: Sequence[int], ends: Sequence[bytes]) -> QueueReading:
    """One queue's reading from its lists' lengths and the ends of their tail items."""
    times = [t for t in (issued_at(p) for p in ends) if t is not None]
    return QueueReading(depth=sum(depths), oldest_issued_at=min(times) if times else None)


def queue_script(names: Sequence[str], *, peek_bytes: int) -> tuple[Any, ...] | None:
    """The arguments of one EVAL reading every named queue; None when there is none."""
    if not names:
        return None
    keys = [key for name in names for key in queue_keys(name)]
    return (_READ_SCRIPT, len(keys), *keys, peek_bytes)


def parse_reply(names: Sequence[str], reply: Sequence[Any]) -> dict[str, QueueReading]:
    """Each queue's reading from the script's reply."""
    per = len(PRIORITY_SUFFIXES)
    readings = {}
    for i, name in enumerate(names):
        part = reply[2 * i * per : 2 * (i + 1) * per]
        depths = [int(n) for n in part[0::2]]
        ends = [p if isinstance(p, bytes) else str(p).encode() for p in part[1::2]]
        readings[name] = combine(depths, ends)
    return readings
