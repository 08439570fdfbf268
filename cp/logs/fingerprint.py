"""The shape of a log message: what varies between two occurrences of one problem masked, so that
``mycelial logs --errors`` counts them as one. Pure."""

from __future__ import annotations

import hashlib
import re

MAX_SHAPE_CHARS = 300  # of the message's first line; a longer tail rarely tells problems apart

# order matters: each mask must not be taken apart by a later, broader one
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE), "<url>"),
    (re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""), "<str>"),
    (re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.@%+~-]+){2,}[\\/]?|(?<![\w/])~?/[\w.@%+~-]+"), "<path>"),
    (
        re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE),
        "<uuid>",
    ),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>"),
    (
        re.compile(
            r"\[[0-9a-f:]*:[0-9a-f:]+\](?::\d+)?|\b(?:[0-9a-f]{1,4}:){3,7}[0-9a-f]{1,4}\b", re.IGNORECASE
        ),
        "<ip>",
    ),
    (re.compile(r"\b(?:[a-z0-9-]+\.)+(?:[a-z]{2,})(?::\d+)?\b", re.IGNORECASE), "<host>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (
        re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b|\b0x[0-9a-f]+\b", re.IGNORECASE),
        "<hex>",
    ),
    (re.compile(r"(?<![A-Za-z])[+-]?\d+(?:[.,]\d+)*(?:e[+-]?\d+)?"), "<n>"),
)
_SPACES = re.compile(r"\s+")


def shape(message: str) -> str:
    """``message``'s first line with numbers, ids, uuids, hex, quoted strings, paths, URLs, hosts
    and IP addresses masked (``<n>``, ``<hex>``, ``<str>``, ``<path>`` ...), spaces collapsed."""
    first = message.strip().split("\n", 1)[0][:MAX_SHAPE_CHARS]
    for pattern, mask in _MASKS:
        first = pattern.sub(mask, first)
    return _SPACES.sub(" ", first).strip()


def fingerprint(logger: str, message: str) -> str:
    """A short stable id of the problem: the logger and the message's shape."""
    return hashlib.sha256(f"{logger}\0{shape(message)}".encode()).hexdigest()[:12]
