"""Enrolment tokens and proofs (pure): what `mycelial daemons enroll` prints and a daemon proves.

A token is ``myc1.`` and base64url of: a 12-byte token id, a 24-byte secret and the control
plane's 32-byte public key. The daemon learns from it whom to trust (the key) and proves it holds
it without sending it: the enrolment message carries an HMAC-SHA256, keyed with the secret's
SHA-256, over its name, the token id and its new public key. Someone who reads the broker sees
the proof, not the secret, and a proof binds one key to one name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cp.security.envelope import canonical
from cp.security.keys import PUBLIC_KEY_BYTES, b64, unb64

PREFIX = "myc1."
_ID_BYTES, _SECRET_BYTES = 12, 24
_LENGTH = _ID_BYTES + _SECRET_BYTES + PUBLIC_KEY_BYTES


class TokenError(ValueError):
    """A token that cannot be used (never echoes the token)."""


@dataclass(frozen=True)
class Token:
    token_id: str  # hex
    secret: bytes
    cp_public_key: str  # base64url

    @classmethod
    def new(cls, cp_public_key: str) -> Token:
        return cls(secrets.token_hex(_ID_BYTES), secrets.token_bytes(_SECRET_BYTES), cp_public_key)

    def text(self) -> str:
        return PREFIX + b64(bytes.fromhex(self.token_id) + self.secret + unb64(self.cp_public_key))

    @property
    def secret_digest(self) -> str:
        return hashlib.sha256(self.secret).hexdigest()

    @classmethod
    def parse(cls, text: str) -> Token:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise TokenError(f"an enrolment token starts with {PREFIX!r}")
        try:
            raw = unb64(text[len(PREFIX) :])
        except (ValueError, TypeError):
            raise TokenError("the enrolment token is not base64url text") from None
        if len(raw) != _LENGTH:
            raise TokenError("the enrolment token has the wrong length (copied whole?)")
        return cls(
            token_id=raw[:_ID_BYTES].hex(),
            secret=raw[_ID_BYTES : _ID_BYTES + _SECRET_BYTES],
            cp_public_key=b64(raw[_ID_BYTES + _SECRET_BYTES :]),
        )


def proof(secret_digest: str, *, name: str, token_id: str, public_key: str) -> str:
    message = canonical(["mycelial-enroll", 1, name, token_id, public_key]).encode()
    return b64(hmac.new(bytes.fromhex(secret_digest), message, hashlib.sha256).digest())


def proof_matches(secret_digest: str, given: str, *, name: str, token_id: str, public_key: str) -> bool:
    expected = proof(secret_digest, name=name, token_id=token_id, public_key=public_key)
    return hmac.compare_digest(expected, given)
