"""Pure checks of an incoming broker message, before kombu or Celery read any part of it.

Two layers, matching where kombu and Celery would otherwise raise: ``check_raw`` takes the raw
bytes kombu's Redis transport pops (size, JSON, the envelope's own fields) and ``check_task``
takes the parts of a decoded kombu message (Celery's protocol-2 headers and body). Each returns
one readable reason, or ``None`` for a message that is safe to hand on.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.utils.time import maybe_iso8601
from kombu.utils.json import loads as kombu_loads

from cp.settings import MAX_HEADER_TEXT_CHARS, MAX_ID_CHARS, MAX_RETRIES_HEADER, Settings

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
TASK_PREFIXES = ("cp.", "daemon.")  # celery.* built-ins (group, chord, chain ...) run other tasks
EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")
MAX_HEADERS = 64
MAX_DELIVERY_TAG_CHARS = 128
MAX_QUEUE_CHARS = 255


@dataclass(frozen=True, kw_only=True)
class MessageLimits:
    """What an incoming message may weigh and carry (cp/settings.py)."""

    max_bytes: int = 8 * 2**20
    max_eta: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MessageLimits:
        return cls(max_bytes=settings.message_max_bytes, max_eta=settings.message_max_eta)


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """Why a message was taken off its queue unprocessed, and what little is known of it."""

    queue: str
    reason: str
    task: str | None = None
    task_id: str | None = None
    copy: str = ""
    # "message_rejected" (malformed) or "security" (not authenticated: docs/security.md)
    kind: str = "message_rejected"


def check_raw(
    raw: bytes | str, *, queue: str, limits: MessageLimits
) -> tuple[dict[str, Any] | None, str | None]:
    """The decoded envelope of a raw Redis list item, or why it cannot be one."""
    if len(raw) > limits.max_bytes:
        return None, f"message of {len(raw)} bytes is over the limit of {limits.max_bytes}"
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        envelope = kombu_loads(text)  # as kombu decodes it, type hooks included
    except Exception as exc:  # kombu's decoder may raise anything on hostile input
        return None, f"not a JSON message: {_short(exc)}"
    problem = check_envelope(envelope, queue=queue)
    return (None, problem) if problem else (envelope, None)


def check_envelope(envelope: object, *, queue: str) -> str | None:
    """Why a decoded kombu Redis envelope would break kombu's Message, or ``None``."""
    if not isinstance(envelope, dict):
        return f"envelope must be an object, got {type(envelope).__name__}"
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return "envelope: properties must be an object"
    tag = properties.get("delivery_tag")
    if not _bounded_str(tag, MAX_DELIVERY_TAG_CHARS):
        return f"envelope: properties.delivery_tag must be a string of at most {MAX_DELIVERY_TAG_CHARS} chars"
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        return "envelope: properties.delivery_info must be an object"
    for key in ("exchange", "routing_key"):
        if not _bounded_str(info.get(key), MAX_QUEUE_CHARS, empty=True):
            return f"envelope: properties.delivery_info.{key} must be a string"
    # kombu restores an unacknowledged message through its exchange and routing key, so both must
    # lead back to this queue: a restoring control-plane worker would otherwise push it wherever
    # a binding table says, and a daemon may write its own queue's and the pidbox's tables
    if info["routing_key"] != queue:
        return f"envelope: routing key {_short(info['routing_key'])!r} is not this queue"
    if info["exchange"] not in ("", queue):
        return f"envelope: exchange {_short(info['exchange'])!r} is not this queue's"
    if properties.get("body_encoding") != "base64":
        return "envelope: properties.body_encoding must be 'base64'"
    priority = properties.get("priority", 0)
    if not _int(priority) or not 0 <= priority <= 255:
        return "envelope: properties.priority must be an integer 0-255"
    body = envelope.get("body")
    if not isinstance(body, str):
        return "envelope: body must be a base64 string"
    try:
        base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return "envelope: body is not valid base64"
    if not isinstance(envelope.get("headers"), dict):
        return "envelope: headers must be an object"
    # kombu would decompress the body while building the Message, before any check (a bomb)
    if "compression" in envelope["headers"]:
        return "compressed messages are not accepted"
    if envelope.get("content-type") != CONTENT_TYPE:
        return f"content type must be {CONTENT_TYPE!r}, got {_short(envelope.get('content-type'))!r}"
    if envelope.get("content-encoding") != CONTENT_ENCODING:
        return (
            f"content encoding must be {CONTENT_ENCODING!r}, got {_short(envelope.get('content-encoding'))!r}"
        )
    return None


def check_task(
    *,
    headers: object,
    body: object,
    content_type: object,
    content_encoding: object,
    registered: Collection[str],
    limits: MessageLimits,
    now: datetime,
) -> str | None:
    """Why Celery's consumer would raise on (or a task should never see) this message, or ``None``."""
    return check_task_body(
        headers=headers,
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        registered=registered,
        limits=limits,
        now=now,
    )[0]


def check_task_body(
    *,
    headers: object,
    body: object,
    content_type: object,
    content_encoding: object,
    registered: Collection[str],
    limits: MessageLimits,
    now: datetime,
) -> tuple[str | None, object]:
    """``check_task``'s answer and the body it decoded (None unless it got that far), so the
    authentication that follows need not decode a large body again."""
    if content_type != CONTENT_TYPE or content_encoding != CONTENT_ENCODING:
        return f"content must be {CONTENT_TYPE} in {CONTENT_ENCODING}", None
    if not isinstance(headers, Mapping):
        return f"headers must be an object, got {type(headers).__name__}", None
    problem = _check_headers(headers, registered=registered, limits=limits, now=now)
    if problem:
        return problem, None
    if not isinstance(body, bytes | str):
        return "body must be bytes", None
    if len(body) > limits.max_bytes:
        return f"body of {len(body)} bytes is over the limit of {limits.max_bytes}", None
    try:
        decoded = kombu_loads(body.decode("utf-8") if isinstance(body, bytes) else body)
    except Exception as exc:  # kombu's decoder (type hooks included) may raise anything
        return f"body is not JSON: {_short(exc)}", None
    return _check_body(decoded), decoded


def _check_headers(
    headers: Mapping[Any, Any], *, registered: Collection[str], limits: MessageLimits, now: datetime
) -> str | None:
    if len(headers) > MAX_HEADERS:
        return f"{len(headers)} headers, at most {MAX_HEADERS} allowed"
    task = headers.get("task")
    if not isinstance(task, str):
        return f"header task must be a string, got {type(task).__name__}"
    if not task.startswith(TASK_PREFIXES) or task not in registered:
        return f"unknown task {_short(task)!r}"
    if "compression" in headers:
        return "compressed messages are not accepted"
    for key in ("id", "root_id", "parent_id", "group"):
        value = headers.get(key)
        if (key == "id" or value is not None) and not _bounded_str(value, MAX_ID_CHARS):
            return f"header {key} must be a non-empty string of at most {MAX_ID_CHARS} chars"
    for key in ("shadow", "argsrepr", "kwargsrepr", "origin"):
        value = headers.get(key)
        if value is not None and not _bounded_str(value, MAX_HEADER_TEXT_CHARS, empty=True):
            return f"header {key} must be a string of at most {MAX_HEADER_TEXT_CHARS} chars"
    if headers.get("lang", "py") not in ("py", None):
        return "header lang must be 'py'"
    retries = headers.get("retries", 0)
    if retries is not None and (not _int(retries) or not 0 <= retries <= MAX_RETRIES_HEADER):
        return f"header retries must be an integer 0-{MAX_RETRIES_HEADER}"
    for key in ("group_index", "replaced_task_nesting"):
        value = headers.get(key)
        if value is not None and (not _int(value) or not 0 <= value <= 1_000_000):
            return f"header {key} must be a small non-negative integer"
    if headers.get("ignore_result") not in (None, True, False):
        return "header ignore_result must be a boolean"
    timelimit = headers.get("timelimit", [None, None])
    if timelimit is not None and not (
        isinstance(timelimit, list | tuple) and len(timelimit) == 2 and all(map(_limit, timelimit))
    ):
        return "header timelimit must be [soft, hard] of non-negative numbers or nulls"
    for key in ("eta", "expires"):
        problem = _check_time(key, headers.get(key), limits=limits, now=now)
        if problem:
            return problem
    # stamping is a canvas feature this protocol does not use
    if headers.get("stamped_headers") not in (None, []) or headers.get("stamps") not in (None, {}):
        return "stamped messages are not accepted"
    return None


def _check_time(key: str, value: object, *, limits: MessageLimits, now: datetime) -> str | None:
    if value is None:
        return None
    if not _bounded_str(value, 64):
        return f"header {key} must be an ISO 8601 time"
    try:
        when = maybe_iso8601(str(value))
    except (ValueError, OverflowError, TypeError):
        return f"header {key} must be an ISO 8601 time, got {_short(value)!r}"
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if key == "eta" and when - now > timedelta(seconds=limits.max_eta):
        return f"header eta is more than {limits.max_eta:.0f}s ahead"
    return None


def _check_body(decoded: object) -> str | None:
    if not isinstance(decoded, list) or len(decoded) != 3:
        return "body must be [args, kwargs, embed]"
    args, kwargs, embed = decoded
    if not isinstance(args, list) or len(args) > 1:
        return "body args must be a list of at most one payload"
    if not isinstance(kwargs, dict) or kwargs:
        return "body kwargs must be empty"
    if embed is None:
        return None
    if not isinstance(embed, dict):
        return "body embed must be an object"
    unknown = set(embed) - set(EMBED_KEYS)
    if unknown:
        return f"body embed has unknown keys: {', '.join(sorted(_short(k) for k in unknown))}"
    # no canvas here: a forged callback, chain or chord would run other tasks
    for key in EMBED_KEYS:
        if embed.get(key):
            return f"body embed {key} is not accepted (no canvas)"
    return None


def message_copy(*parts: object, limit: int) -> str:
    """A truncated JSON copy of what was received, for the dead-letter list."""
    try:
        text = json.dumps(parts[0] if len(parts) == 1 else list(parts), default=_jsonable)
    except (ValueError, RecursionError):
        text = repr(parts)
    return text[:limit]


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value[:65_536].decode("utf-8", errors="replace")
    return repr(value)[:1_000]


def _bounded_str(value: object, limit: int, *, empty: bool = False) -> bool:
    return isinstance(value, str) and (empty or bool(value)) and len(value) <= limit


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _limit(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and 0 <= value <= 7 * 86_400


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
