"""What a daemon accepts: messages signed by a control-plane key it trusts, for its own queue,
issued within the window, each once (docs/security.md)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
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


class SeenNonces:
    """The nonces of the messages accepted and still valid, in this process (bounded): ``seen`` on
    receipt, ``done`` once processed; only a copy of a processed message is a replay (a message
    handed out again because it was never acknowledged passes, as on the control plane).

    Kept in memory: a daemon restarted within a message's validity would accept its replay, which
    does nothing more than the original did (a job runs once per run key and attempt, configs only
    move forward, a probe is answered again; docs/security.md).
    """

    def __init__(self, *, capacity: int = 200_000, clock: Callable[[], float] = time.monotonic):
        self._capacity = capacity
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, nonce: str, *, keep_s: float) -> bool:
        now = self._clock()
        with self._lock:
            for key, (until, _) in list(self._seen.items())[:100]:  # expire a few each time
                if until < now:
                    del self._seen[key]
            known = self._seen.get(nonce)
            if known is not None:
                return not known[1]
            self._seen[nonce] = (now + keep_s, False)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True

    def done(self, nonce: str, *, keep_s: float) -> None:
        with self._lock:
            self._seen[nonce] = (self._clock() + keep_s, True)


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
