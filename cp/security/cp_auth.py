"""What the control plane accepts: a message signed by itself, or by a daemon's current key
speaking for that daemon only; never a replay (docs/security.md)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cp.messaging.guard import RedisScope
from cp.protocol import (
    CP_CONFIG_APPLIED,
    CP_CONFIG_REQUEST,
    CP_DAEMON_HELLO,
    CP_ENROLL,
    CP_HEARTBEAT,
    CP_LOGS,
    CP_MESSAGE_REJECTED,
    CP_PROBE_REPLY,
    CP_RUN_EVENT,
    HEARTBEAT_TASK_ID,
    heartbeat_key,
)
from cp.security.envelope import (
    AUTH_HEADER,
    CP_SENDER,
    AlreadyAccepted,
    Auth,
    AuthError,
    check_signature,
    check_window,
    daemon_sender,
    parse_auth,
    remember_ms,
    sender_daemon,
)
from cp.security.keys import KeyFileError, key_id, public_bytes, public_key_from_text
from cp.security.nonces import SeenNonces

# the field of each daemon message that names the daemon it speaks for
SPEAKS_FOR = {
    CP_DAEMON_HELLO: "name",
    CP_HEARTBEAT: "name",
    CP_RUN_EVENT: "daemon",
    CP_CONFIG_APPLIED: "name",
    CP_CONFIG_REQUEST: "name",
    CP_PROBE_REPLY: "name",
    CP_MESSAGE_REJECTED: "name",
    CP_LOGS: "name",
    CP_ENROLL: "name",
}


@dataclass(frozen=True)
class DaemonKeyView:
    key_id: str
    public: Ed25519PublicKey
    revoked: bool


class DaemonKeys:
    """Each daemon's current key, read from the database at most every ``ttl`` seconds per name,
    so a revocation takes effect within that time in every worker, with no restart."""

    def __init__(
        self,
        load: Callable[[str], DaemonKeyView | None],
        *,
        ttl: float,
        capacity: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, DaemonKeyView]] = OrderedDict()
        self._lock = threading.Lock()

    def refresh(self, views: dict[str, DaemonKeyView]) -> None:
        """Take every daemon's key at once (one query for a whole heartbeat flush, not one per daemon)."""
        now = self._clock()
        with self._lock:
            for name, view in views.items():
                self._cache[name] = (now, view)
                self._cache.move_to_end(name)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)

    def get(self, name: str, *, key_id: str | None = None) -> DaemonKeyView | None:
        """The daemon's key. A cached key that is not ``key_id`` is read again first: the daemon
        may have enrolled again since. Only a key is cached (so is its revocation); "no key" is
        not, or a daemon's first messages after enrolling would be refused for a while."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and now - hit[0] < self._ttl and (key_id is None or hit[1].key_id == key_id):
                return hit[1]
        view = self._load(name)
        with self._lock:
            if view is None:
                self._cache.pop(name, None)
                return None
            self._cache[name] = (now, view)
            self._cache.move_to_end(name)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return view


class Nonces:
    """The two-state nonce memory of cp/security/nonces.py, in Redis when the message came with a
    connection (shared by every worker), else in this process."""

    def __init__(self, *, capacity: int = 1_000_000) -> None:
        self._local = SeenNonces(capacity=capacity)

    def first_use(self, by: str, nonce: str, *, keep_ms: int, redis: RedisScope | None) -> bool:
        """False when a message with this nonce was processed already."""
        key = f"mycelial.nonce.{by}.{nonce}"
        if redis is None:
            return self._local.first_use(key, keep_s=keep_ms / 1000)
        with redis() as client:
            # one round trip: set it unless it is there, and read what is there either way
            pipe = client.pipeline(transaction=True)
            pipe.set(key, b"seen", nx=True, px=keep_ms)
            pipe.get(key)
            created, value = pipe.execute()
            return bool(created) or value != b"done"

    def done(self, by: str, nonce: str, *, keep_ms: int, redis: RedisScope | None) -> None:
        key = f"mycelial.nonce.{by}.{nonce}"
        if redis is None:
            self._local.done(key, keep_s=keep_ms / 1000)
            return
        with redis() as client:
            client.set(key, b"done", px=keep_ms)


class ControlPlaneAuthenticator:
    def __init__(
        self,
        *,
        daemon_keys: DaemonKeys,
        cp_keys: Callable[[], Mapping[str, Ed25519PublicKey]],
        nonces: Nonces,
        window_s: float,
        daemon_queues: frozenset[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._daemon_keys = daemon_keys
        self._cp_keys = cp_keys
        self._nonces = nonces
        self._window_s = window_s
        self._daemon_queues = daemon_queues  # the queues daemons may publish to (mycelial.cp)
        self._heartbeat_at: dict[str, int] = {}  # the issue time of each daemon's newest heartbeat
        self._heartbeat_lock = threading.Lock()
        self._clock = clock

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
        except AuthError as exc:
            return str(exc)
        try:
            if auth.by != CP_SENDER and queue not in self._daemon_queues:
                raise AuthError(f"{auth.by} may not publish to {queue}")
            self.verify(auth, task=task, task_id=task_id, queue=queue, payload=payload, redis=redis)
        except AuthError as exc:
            # who it claims to be helps find the source; it proves nothing, so no daemon is blamed
            return f"{exc} (claims to be {auth.by})"
        return None

    def verify(
        self, auth: Auth, *, task: str, task_id: str, queue: str, payload: object, redis: RedisScope | None
    ) -> None:
        """Raise AuthError unless ``auth`` authenticates this message; remembers its nonce."""
        self._authenticate(auth, task=task, task_id=task_id, queue=queue, payload=payload)
        keep_ms = remember_ms(auth, now_ms=int(self._clock() * 1000), window_s=self._window_s)
        if not self._nonces.first_use(auth.by, auth.nonce, keep_ms=keep_ms, redis=redis):
            raise AuthError(f"replayed message (nonce of {auth.by} already seen)")

    def _authenticate(self, auth: Auth, *, task: str, task_id: str, queue: str, payload: object) -> None:
        """Within its validity, signed by a key this sender may use, over exactly this message."""
        check_window(auth, now_ms=int(self._clock() * 1000), window_s=self._window_s)
        public = self._public_key(auth, task=task, queue=queue, payload=payload)
        check_signature(public, auth, task=task, task_id=task_id, queue=queue, payload=payload)

    def _public_key(self, auth: Auth, *, task: str, queue: str, payload: object) -> Ed25519PublicKey:
        if auth.by == CP_SENDER:
            key = self._cp_keys().get(auth.key)
            if key is None:
                raise AuthError(
                    f"signed with control-plane key {auth.key}, which this control plane does not hold"
                )
            return key
        name = sender_daemon(auth.by)
        assert name is not None  # parse_auth admits only cp and daemon:<name>
        field = SPEAKS_FOR.get(task)
        if field is None:
            raise AuthError(f"daemon {name} may not send {task}")
        spoken = payload.get(field) if isinstance(payload, dict) else None
        if spoken != name:
            raise AuthError(f"daemon {name} sent {task} in the name of {str(spoken)[:80]!r}")
        if task == CP_ENROLL:
            # the key is the one being enrolled: the signature proves the daemon holds it; the
            # token proof is checked by the task (cp/security/enrolment.py)
            text = payload.get("public_key") if isinstance(payload, dict) else None
            try:
                public = public_key_from_text(text if isinstance(text, str) else "")
            except KeyFileError as exc:
                raise AuthError(f"enrolment of {name}: {exc}") from None
            if key_id(public_bytes(public)) != auth.key:
                raise AuthError(f"enrolment of {name}: signed with another key than the one enrolled")
            return public
        view = self._daemon_keys.get(name, key_id=auth.key)
        if view is None:
            raise AuthError(f"daemon {name} is not enrolled")
        if view.revoked:
            raise AuthError(f"the key of daemon {name} is revoked")
        if view.key_id != auth.key:
            raise AuthError(f"daemon {name} signed with key {auth.key}, its enrolled key is {view.key_id}")
        return view.public

    def processed(self, *, headers: Mapping[str, Any], redis: RedisScope | None) -> None:
        """The message these headers came with was processed: from now on a copy is a replay."""
        auth = parse_auth(headers.get(AUTH_HEADER))
        keep_ms = remember_ms(auth, now_ms=int(self._clock() * 1000), window_s=self._window_s)
        self._nonces.done(auth.by, auth.nonce, keep_ms=keep_ms, redis=redis)

    def verify_heartbeat(self, name: str, envelope: object, beat: object) -> None:
        """Raise AuthError unless a heartbeat key's value was signed by that daemon (cp/heartbeat_keys.py).

        A heartbeat is replayed if it was issued no later than the last one accepted from that
        daemon: issue times only grow, which costs no round trip per heartbeat as a nonce would
        (this worker remembers them; after it restarts, one heartbeat issued within the window
        could be written back once)."""
        auth = parse_auth(envelope)
        if auth.by != daemon_sender(name):
            raise AuthError(f"heartbeat of {name} signed by {auth.by}")
        key = heartbeat_key(name)
        self._authenticate(auth, task=CP_HEARTBEAT, task_id=HEARTBEAT_TASK_ID, queue=key, payload=beat)
        with self._heartbeat_lock:
            last = self._heartbeat_at.get(name)
            if last is not None and auth.at == last:
                raise AlreadyAccepted(name)  # read again after the lease came back: not an attack
            if last is not None and auth.at < last:
                raise AuthError(f"replayed heartbeat of {name} (issued before the last one accepted)")
            self._heartbeat_at[name] = auth.at
