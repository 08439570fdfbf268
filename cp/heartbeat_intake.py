"""The worker side of heartbeat keys: a broker connection, the reader lease, and the list of
declared daemons, refreshed every few seconds; called from the heartbeat flusher thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from cp.heartbeat_keys import HeartbeatKeyReader, ReaderLease, RejectedKey, read_keys
from cp.heartbeats import ReceivedHeartbeat
from cp.models import utcnow

log = logging.getLogger(__name__)

NAMES_EVERY = 5.0  # seconds between two readings of the declared daemons' names


class HeartbeatIntake:
    def __init__(
        self,
        *,
        connect: Callable[[], tuple[Any, Any] | None],
        declared_names: Callable[[], Sequence[str]],
        lease_seconds: float,
        verify: Callable[[str, object, object], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._declared_names = declared_names
        self._verify = verify  # (daemon, envelope, heartbeat): raises when not authentic
        self._lease = ReaderLease(ttl_seconds=lease_seconds)
        self._clock = clock
        self._connection: Any = None
        self._client: Any = None
        self._unsupported = False
        self._reader: HeartbeatKeyReader | None = None
        self._names: Sequence[str] = ()
        self._names_at = float("-inf")
        self._held = False
        self._failing = False

    def gather(self) -> tuple[list[ReceivedHeartbeat], list[RejectedKey]]:
        """The heartbeats written since the last call, if this worker holds the lease; never raises
        for a broker error (logged once per outage)."""
        if self._unsupported:
            return [], []
        try:
            client = self._ensure_client()
            if client is None:
                return [], []
            held = self._lease.hold(client)
            if not held:
                if self._held and self._reader is not None:
                    self._reader.forget()
                self._held = False
                return [], []
            self._held = True
            now = self._clock()
            if now - self._names_at >= NAMES_EVERY:
                self._names, self._names_at = list(self._declared_names()), now
            assert self._reader is not None
            gathered = self._reader.read(self._names, now=utcnow())
        except Exception as exc:  # broker or database away: the keys wait, the next call tries again
            self._drop()
            if not self._failing:
                log.warning("cannot read heartbeat keys (%s); trying again every flush", exc)
                self._failing = True
            return [], []
        if self._failing:
            log.info("reading heartbeat keys again")
            self._failing = False
        return gathered

    def close(self) -> None:
        self._drop()

    def _ensure_client(self) -> Any:
        if self._client is None:
            made = self._connect()
            if made is None:
                self._unsupported = True
                return None
            self._connection, self._client = made
            client = self._client
            self._reader = HeartbeatKeyReader(lambda names: read_keys(client, names), verify=self._verify)
        return self._client

    def _drop(self) -> None:
        connection, self._connection, self._client, self._reader = self._connection, None, None, None
        self._held = False
        if connection is not None:
            try:
                connection.release()
            except Exception:
                log.debug("closing the heartbeat-key connection failed", exc_info=True)
