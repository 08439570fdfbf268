"""A daemon's own key and the control-plane keys it trusts, under its home (0600 files).

``$MYCELIAL_HOME/daemons/<name>/identity.pem`` is the daemon's private key, made at enrolment;
``cp-keys.json`` lists the control-plane public keys it accepts messages from (first from the
enrolment token, later from ``daemon.trust_keys``); ``enrolment.json`` remembers the token it
enrolled with, so a restart with the same token does not enrol again.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import cp
from cp.protocol import DaemonEnroll
from cp.security.keys import (
    Identity,
    KeyFileError,
    key_id,
    public_bytes,
    public_key_from_text,
    write_private_file,
)
from cp.security.tokens import Token, TokenError, proof


class NotEnrolledError(RuntimeError):
    """The daemon has no key yet and no token to enrol with."""


@dataclass(frozen=True)
class Enrolment:
    identity: Identity
    request: DaemonEnroll | None  # the cp.enroll message to send first, when enrolling now


class DaemonKeyStore:
    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self.key_path = folder / "identity.pem"
        self.trust_path = folder / "cp-keys.json"
        self.enrolment_path = folder / "enrolment.json"
        self.generation_path = folder / "cp-keys.generation"
        self._lock = threading.Lock()
        self._trusted: tuple[int, dict[str, Ed25519PublicKey]] | None = None

    def start(self, token_text: str | None) -> Enrolment:
        """The daemon's identity; with a token it has not used yet, a new key and its request."""
        token = None
        if token_text:
            try:
                token = Token.parse(token_text)
            except TokenError as exc:
                raise NotEnrolledError(f"--enroll-token: {exc}") from None
        if token is not None and token.token_id != self._enrolled_with():
            identity = Identity.generate()
            identity.save(self.key_path)
            self.generation_path.unlink(missing_ok=True)  # a new enrolment starts the lists again
            self.trust([token.cp_public_key])
            write_private_file(self.enrolment_path, json.dumps({"token_id": token.token_id}).encode())
            request = DaemonEnroll(
                name=self.name,
                token_id=token.token_id,
                public_key=identity.public_text,
                proof=proof(
                    token.secret_digest,
                    name=self.name,
                    token_id=token.token_id,
                    public_key=identity.public_text,
                ),
                software_version=cp.__version__,
            )
            return Enrolment(identity, request)
        if not self.key_path.exists() or not self.trust_path.exists():
            raise NotEnrolledError(
                f"daemon {self.name} is not enrolled: run `mycelial daemons enroll {self.name}` where the "
                "control plane runs and start the daemon once with --enroll-token TOKEN"
            )
        try:
            return Enrolment(Identity.load(self.key_path), None)
        except KeyFileError as exc:
            raise NotEnrolledError(str(exc)) from None

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """The control-plane keys this daemon accepts, by key id (read again when the file changes)."""
        with self._lock:
            try:
                stamp = self.trust_path.stat().st_mtime_ns
            except FileNotFoundError:
                return {}
            if self._trusted is not None and self._trusted[0] == stamp:
                return self._trusted[1]
            try:
                texts = json.loads(self.trust_path.read_text(encoding="utf-8"))
            except (FileNotFoundError, ValueError):
                return {}
        keys = {}
        for text in texts if isinstance(texts, list) else []:
            try:
                public = public_key_from_text(str(text))
            except KeyFileError:
                continue
            keys[key_id(public_bytes(public))] = public
        with self._lock:
            self._trusted = (stamp, keys)
        return keys

    def trust(self, keys: list[str], *, generation: int = 0) -> bool:
        """Trust exactly ``keys`` from now on, unless a list at least as new is already kept."""
        for text in keys:
            public_key_from_text(text)  # refuse a bad key before replacing a good list
        with self._lock:
            if generation and generation <= self._generation():
                return False
            write_private_file(self.trust_path, json.dumps(keys).encode())
            write_private_file(self.generation_path, str(generation).encode())
            return True

    def _generation(self) -> int:
        try:
            return int(self.generation_path.read_text(encoding="utf-8").strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _enrolled_with(self) -> str | None:
        try:
            data = json.loads(self.enrolment_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return data.get("token_id") if isinstance(data, dict) and self.key_path.exists() else None
