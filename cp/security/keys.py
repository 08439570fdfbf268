"""Ed25519 key pairs on disk: a private key only its owner can read, public keys as short text.

Ed25519 (``cryptography``'s implementation of RFC 8032): 32-byte keys, 64-byte signatures,
deterministic signing (no random number to get wrong), about 30 µs to sign and 70 µs to verify
here, and a verifier that needs only the public key, so the control plane's database holds
nothing that lets anyone speak for a daemon.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_KEY_FILE_BYTES = 4_096


class KeyFileError(ValueError):
    """A key file or a public key that cannot be used; the message says which and why."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """A short, stable name of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public).hexdigest()[:16]


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """A public key from its base64url text; KeyFileError when it is not one."""
    try:
        raw = unb64(text)
    except (ValueError, TypeError):
        raise KeyFileError("public key is not base64url text") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise KeyFileError(f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


class Identity:
    """One private key and what others need to know of it."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.public_raw = public_bytes(self.public)
        self.public_text = b64(self.public_raw)
        self.key_id = key_id(self.public_raw)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def save(self, path: Path) -> None:
        """Write the private key to ``path``, readable by its owner only, atomically."""
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private_file(path, pem)

    @classmethod
    def load(cls, path: Path) -> Identity:
        """The key in ``path``; KeyFileError (with the path) when it is missing, unreadable by others
        only in name, or not an Ed25519 private key. A file others can read is tightened first."""
        try:
            info = path.stat()
        except FileNotFoundError:
            raise KeyFileError(f"{path}: no key file") from None
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{path}: {info.st_size} bytes is too big for a key file")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(path, 0o600)  # an older release or a copy left it readable by others
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path}: not a PEM private key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 private key")
        return cls(private)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The key in ``path``, made first if there is none; processes starting at once agree on
        one key (the file is linked into place only if absent)."""
        if not path.exists():
            identity = cls.generate()
            pem = identity._private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
            write_private_file(tmp, pem)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made one first: use that
            finally:
                tmp.unlink(missing_ok=True)
        return cls.load(path)


def verify(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """``data`` in ``path``, mode 0600 from the first byte, in a 0700 folder, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
