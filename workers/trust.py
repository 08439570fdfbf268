"""What a daemon accepts: messages signed by a control-plane key it trusts, for its own queue,
issued within the window, each once (docs/security.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cp.messaging.guard import RedisScope
from cp.security.envelope import (
    AUTH_HEADER,
    CP_SENDER,
    AuthError,
    check_signature,
    check_window,
    parse_auth,
    remember_ms,
)
from cp.security.nonces import SeenNonces


class DaemonAuthenticator:
    def __init__(
        self,
        *,
        queue: str,
        trusted: Callable[[], Mapping[str, Ed25519PublicKey]],
        window_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._trusted = trusted
        self._window_s = window_s
        self._clock = clock
        # in memory: a daemon restarted within a message's validity would accept its replay once,
        # which does nothing the original did not (a job runs once per run key and attempt,
        # configs only move forward, a probe is answered again; docs/security.md)
        self._nonces = SeenNonces()

    def check(
        self,
        *,
        task: str,
        task_id: str,
        queue: str,
        headers: Mapping[str, Any],
        payload: object,
        redis: RedisScope | None,
    ) -> str | None:
        try:
            auth = parse_auth(headers.get(AUTH_HEADER))
            if auth.by != CP_SENDER:
                raise AuthError(f"only the control plane commands daemons, not {auth.by}")
            if queue != self._queue:
                raise AuthError(f"published to {queue}, not to this daemon's queue {self._queue}")
            check_window(auth, now_ms=int(self._clock() * 1000), window_s=self._window_s)
            public = self._trusted().get(auth.key)
            if public is None:
                raise AuthError(f"signed with key {auth.key}, which this daemon does not trust")
            check_signature(public, auth, task=task, task_id=task_id, queue=queue, payload=payload)
            keep_ms = remember_ms(auth, now_ms=int(self._clock() * 1000), window_s=self._window_s)
            if not self._nonces.first_use(auth.nonce, keep_s=keep_ms / 1000):
                raise AuthError("replayed message (nonce already seen)")
        except AuthError as exc:
            return str(exc)
        return None

    def processed(self, *, headers: Mapping[str, Any], redis: RedisScope | None) -> None:
        """The message these headers came with was processed: from now on a copy is a replay."""
        auth = parse_auth(headers.get(AUTH_HEADER))
        keep_ms = remember_ms(auth, now_ms=int(self._clock() * 1000), window_s=self._window_s)
        self._nonces.done(auth.nonce, keep_s=keep_ms / 1000)
