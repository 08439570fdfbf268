"""Standard Webhooks signatures: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``.

A secret in the spec's ``whsec_<base64>`` form is decoded to its key bytes; any other secret is
used as its UTF-8 bytes (docs/notifications.md shows a receiver's check).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"


class SigningKeyError(ValueError):
    """A ``whsec_`` secret whose rest is not base64; the message never holds the secret."""


def signing_key(secret: str) -> bytes:
    """The HMAC key a secret stands for."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            raise SigningKeyError("the secret starts with whsec_ but the rest is not base64") from None
    if not secret:
        raise SigningKeyError("the secret is empty")
    return secret.encode("utf-8")


def sign(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(key: bytes, *, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether any signature in ``header`` (space-separated) matches; what a receiver does."""
    expected = sign(key, msg_id=msg_id, timestamp=timestamp, body=body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split())
