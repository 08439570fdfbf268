"""The control plane's own key pair under its home, and the previous one during a rotation.

Every control-plane process (worker, beat, the CLI that dispatches) signs with
``$MYCELIAL_HOME/keys/cp.pem``, made on first use (0600, in a 0700 folder). A rotation prepares
``cp.next.pem``, tells the daemons to trust both (signed with the current key), then promotes it
and keeps the old key as ``cp.previous.pem``: the control plane still accepts messages signed by
it (its own retries in flight) until ``retire_previous`` (docs/security.md).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cp.security.keys import Identity


class ControlPlaneKeys:
    def __init__(self, home: Path) -> None:
        self.folder = home / "keys"
        self.current_path = self.folder / "cp.pem"
        self.previous_path = self.folder / "cp.previous.pem"
        self.next_path = self.folder / "cp.next.pem"
        self._lock = threading.Lock()
        self._current: tuple[float, Identity] | None = None
        self._previous: tuple[float, Identity | None] | None = None

    def current(self) -> Identity:
        """The signing key; made on first use, read again when another process rotated it."""
        with self._lock:
            mtime = _mtime(self.current_path)
            if self._current is None or self._current[0] != mtime:
                identity = Identity.load_or_create(self.current_path)
                self._current = (_mtime(self.current_path), identity)
            return self._current[1]

    def previous(self) -> Identity | None:
        with self._lock:
            mtime = _mtime(self.previous_path)
            if self._previous is None or self._previous[0] != mtime:
                identity = Identity.load(self.previous_path) if self.previous_path.exists() else None
                self._previous = (mtime, identity)
            return self._previous[1]

    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """The keys whose signatures are the control plane's: current, and previous if kept."""
        keys = {}
        for identity in (self.current(), self.previous()):
            if identity is not None:
                keys[identity.key_id] = identity.public
        return keys

    def prepare_next(self) -> Identity:
        """The key the next rotation switches to (made now, kept as cp.next.pem)."""
        return Identity.load_or_create(self.next_path)

    def promote_next(self) -> Identity:
        """Sign with the prepared key from now on; the old one is kept as previous."""
        if self.previous_path.exists():
            raise FileExistsError(f"{self.previous_path} still holds the key before the last rotation")
        os.link(self.current_path, self.previous_path)
        os.replace(self.next_path, self.current_path)
        return self.current()

    def retire_previous(self) -> Identity | None:
        previous = self.previous()
        self.previous_path.unlink(missing_ok=True)
        return previous


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns / 1e9
    except FileNotFoundError:
        return -1.0
