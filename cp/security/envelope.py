"""The signed envelope every message carries in its ``mycelial_auth`` header (docs/security.md).

Celery's ``auth`` serializer signs only the body. This signature covers everything that decides
what a message does: who sends it (``by``: ``cp`` or ``daemon:<name>``) with which key, when
(``at``) and until when it is valid (``exp``, both milliseconds since the epoch), a random
``nonce``, the task name, the task id, the queue it was published to and the payload (the one
positional argument), as canonical JSON. Swapping the task, the queue or the id, editing the
payload, or replaying it after ``exp`` or twice all fail verification.

A message is valid for the replay window (5 min by default) after it was signed, or until its
own expiry when it carries one (jobs and config pushes wait in a daemon's queue for as long as
their ``expires`` allows); receivers remember a nonce until its message's ``exp``.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cp.security.keys import Identity, b64, unb64, verify

AUTH_HEADER = "mycelial_auth"
VERSION = 1
CP_SENDER = "cp"
DAEMON_SENDER_PREFIX = "daemon:"
_SENDER = re.compile(r"^(cp|daemon:[A-Za-z0-9][A-Za-z0-9_.-]{0,62})$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_SIG = re.compile(r"^[A-Za-z0-9_-]{86}$")  # 64 bytes, base64url without padding


def daemon_sender(name: str) -> str:
    return f"{DAEMON_SENDER_PREFIX}{name}"


def sender_daemon(by: str) -> str | None:
    """The daemon name of a ``daemon:<name>`` sender, else None."""
    return by[len(DAEMON_SENDER_PREFIX) :] if by.startswith(DAEMON_SENDER_PREFIX) else None


MAX_VALIDITY_S = 7 * 86_400  # a longer-lived message would make receivers keep its nonce too long
_FIELDS = {"v", "by", "key", "at", "exp", "nonce", "sig"}


@dataclass(frozen=True)
class Auth:
    by: str
    key: str
    at: int  # ms since the epoch, the sender's clock
    exp: int  # ms since the epoch: not valid after
    nonce: str
    sig: str

    def as_header(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "by": self.by,
            "key": self.key,
            "at": self.at,
            "exp": self.exp,
            "nonce": self.nonce,
            "sig": self.sig,
        }


class AuthError(ValueError):
    """Why a message's envelope does not authenticate it (one line, no secret in it)."""


class AlreadyAccepted(Exception):
    """This very heartbeat was accepted before (read again, not replayed): nothing to do."""


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def signed_bytes(
    *, by: str, key: str, at: int, exp: int, nonce: str, task: str, task_id: str, queue: str, payload: object
) -> bytes:
    return canonical(
        ["mycelial-auth", VERSION, by, key, at, exp, nonce, task, task_id, queue, payload]
    ).encode()


def sign(
    identity: Identity,
    *,
    by: str,
    task: str,
    task_id: str,
    queue: str,
    payload: object,
    now_ms: int,
    exp_ms: int,
) -> Auth:
    nonce = secrets.token_hex(16)
    exp_ms = max(now_ms, min(exp_ms, now_ms + MAX_VALIDITY_S * 1000))
    data = signed_bytes(
        by=by,
        key=identity.key_id,
        at=now_ms,
        exp=exp_ms,
        nonce=nonce,
        task=task,
        task_id=task_id,
        queue=queue,
        payload=payload,
    )
    return Auth(by=by, key=identity.key_id, at=now_ms, exp=exp_ms, nonce=nonce, sig=b64(identity.sign(data)))


def parse_auth(header: object) -> Auth:
    """The envelope in a message's header; AuthError when it is missing or malformed."""
    if header is None:
        raise AuthError("unsigned message (no mycelial_auth header)")
    if not isinstance(header, dict):
        raise AuthError("mycelial_auth header must be an object")
    if header.get("v") != VERSION or set(header) != _FIELDS:
        raise AuthError(
            f"mycelial_auth header must be version {VERSION} with by, key, at, exp, nonce and sig"
        )
    by, key, at, exp, nonce, sig = (header[k] for k in ("by", "key", "at", "exp", "nonce", "sig"))
    if not isinstance(by, str) or not _SENDER.match(by):
        raise AuthError("mycelial_auth.by must be 'cp' or 'daemon:<name>'")
    if not isinstance(key, str) or not _KEY_ID.match(key):
        raise AuthError("mycelial_auth.key must be a key id (16 hex digits)")
    if isinstance(at, bool) or not isinstance(at, int) or not 0 < at < 2**53:
        raise AuthError("mycelial_auth.at must be milliseconds since the epoch")
    if isinstance(exp, bool) or not isinstance(exp, int) or not at <= exp <= at + MAX_VALIDITY_S * 1000:
        raise AuthError(
            f"mycelial_auth.exp must be milliseconds since the epoch, at most {MAX_VALIDITY_S}s after at"
        )
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise AuthError("mycelial_auth.nonce must be 32 hex digits")
    if not isinstance(sig, str) or not _SIG.match(sig):
        raise AuthError("mycelial_auth.sig must be a base64url Ed25519 signature")
    return Auth(by=by, key=key, at=at, exp=exp, nonce=nonce, sig=sig)


def check_signature(
    public: Ed25519PublicKey, auth: Auth, *, task: str, task_id: str, queue: str, payload: object
) -> None:
    try:
        data = signed_bytes(
            by=auth.by,
            key=auth.key,
            at=auth.at,
            exp=auth.exp,
            nonce=auth.nonce,
            task=task,
            task_id=task_id,
            queue=queue,
            payload=payload,
        )
    except (ValueError, TypeError):  # NaN or a type JSON cannot hold: no sender signed that
        raise AuthError("payload cannot be put in canonical form") from None
    if not verify(public, unb64(auth.sig), data):
        raise AuthError(f"bad signature for {auth.by} key {auth.key} (task, id, queue or payload altered)")


def check_window(auth: Auth, *, now_ms: int, window_s: float) -> None:
    """Refuse a message past its ``exp``, or issued further in the future than the window (a
    clock that far off, or a forgery)."""
    if auth.at - now_ms > window_s * 1000:
        raise AuthError(
            f"issued {(auth.at - now_ms) / 1000:.0f}s in the future, beyond the window of {window_s:.0f}s"
        )
    if now_ms > auth.exp:
        age, valid = (now_ms - auth.at) / 1000, (auth.exp - auth.at) / 1000
        raise AuthError(
            f"expired: issued {age:.0f}s ago, valid for {valid:.0f}s "
            "(a replay, or a message that waited too long)"
        )


def remember_ms(auth: Auth, *, now_ms: int, window_s: float) -> int:
    """How long a receiver must remember the nonce: until the message could no longer pass."""
    return max(1, auth.exp - now_ms) + int(window_s * 1000)
