"""A daemon's messages to the control plane, kept while the broker is away and sent in order.

Callers never wait for the broker and never see its errors: ``put`` queues a message, one sender
thread publishes the queue head, retrying with backoff while publishing fails, so messages leave
in the order they were put. Messages that share a ``key`` coalesce (a newer one replaces the queued
one in its place): only the newest heartbeat, or the newest progress of a run, is worth sending.
The queue is bounded: when it is full the oldest droppable message (heartbeat, progress, probe
reply) makes room; messages that must arrive (a run's start and end, hello, config results) are
never dropped. Those can only come from jobs the daemon took from its queue before the broker went
away, so there are few of them. ``close`` sends what it can before a deadline and spools the rest to
a local file (mode 0600) that the next process of the daemon sends first.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kombu.exceptions import ContentDisallowed, EncodeError

from cp.private_files import open_private, private_dir

log = logging.getLogger(__name__)

# a message the broker refuses for what it is, not for being away: retrying cannot help
_UNSENDABLE = (EncodeError, ContentDisallowed, TypeError, ValueError)


@dataclass(frozen=True)
class Envelope:
    """One message for the control plane, as the outbox keeps and spools it."""

    task: str
    payload: dict[str, Any]
    argsrepr: str
    key: str | None = None  # envelopes with the same key coalesce: only the newest is sent
    droppable: bool = False  # may make room in a full outbox


class _Entry:
    __slots__ = ("envelope",)

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope


class Outbox:
    """A bounded, ordered queue of envelopes drained by one sender thread."""

    def __init__(
        self,
        publish: Callable[[Envelope], None],
        *,
        max_pending: int,
        spool: Path | None = None,
        retry_initial: float = 0.2,
        retry_max: float = 2.0,
        name: str = "outbox",
    ) -> None:
        self._publish = publish
        self.max_pending = max_pending
        self.spool = spool
        self._retry_initial, self._retry_max = retry_initial, retry_max
        self._name = name
        self._queue: deque[_Entry] = deque()
        self._by_key: dict[str, _Entry] = {}
        self._in_flight: _Entry | None = None
        self._cond = threading.Condition()
        self._abandon = threading.Event()  # the sender stops even with messages left
        self._thread: threading.Thread | None = None
        self._closed = False
        self.dropped = 0  # droppable messages that made room, over the outbox's life
        self._failing_since: float | None = None

    # --- callers

    def put(self, envelope: Envelope) -> None:
        """Queue ``envelope``; never blocks and never raises for the broker's sake."""
        with self._cond:
            if self._closed:
                self._append_to_spool([envelope])
                return
            self._add(envelope)
            self._cond.notify_all()

    def pending(self) -> list[Envelope]:
        """What is still to be sent, in sending order (the one being sent first)."""
        with self._cond:
            entries = ([self._in_flight] if self._in_flight else []) + list(self._queue)
            return [e.envelope for e in entries]

    def flush(self, *, timeout: float) -> bool:
        """Wait until everything queued so far is sent; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # --- lifecycle

    def start(self) -> None:
        """Take over what an earlier process spooled, then start sending."""
        if self._thread is not None:
            return
        with self._cond:
            for envelope in self._load_spool():
                self._add(envelope)
        self._thread = threading.Thread(target=self._run, name=f"mycelial-{self._name}", daemon=True)
        self._thread.start()

    def close(self, *, timeout: float) -> None:
        """Send for up to ``timeout`` seconds, then stop and spool whatever is left."""
        if self._thread is not None:
            self.flush(timeout=timeout)
        self._abandon.set()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a publish in progress gives up at its socket timeout
        with self._cond:
            left = [e.envelope for e in ([self._in_flight] if self._in_flight else []) + list(self._queue)]
            self._queue.clear()
            self._by_key.clear()
        if left:
            log.warning("%s: %d message(s) not sent; spooled to %s", self._name, len(left), self.spool)
            self._append_to_spool(left)

    # --- the queue (callers hold the lock)

    def _add(self, envelope: Envelope) -> None:
        if envelope.key is not None and (queued := self._by_key.get(envelope.key)) is not None:
            queued.envelope = envelope  # in place: order among the other messages is kept
            return
        if len(self._queue) >= self.max_pending and not self._make_room(for_=envelope):
            return
        entry = _Entry(envelope)
        self._queue.append(entry)
        if envelope.key is not None:
            self._by_key[envelope.key] = entry

    def _make_room(self, *, for_: Envelope) -> bool:
        victim = next((e for e in self._queue if e.envelope.droppable), None)
        if victim is None:
            if for_.droppable:
                self._count_drop(for_)
                return False
            log.warning("%s: full of messages that must arrive; keeping %s too", self._name, for_.task)
            return True
        self._queue.remove(victim)
        if victim.envelope.key is not None and self._by_key.get(victim.envelope.key) is victim:
            del self._by_key[victim.envelope.key]
        self._count_drop(victim.envelope)
        return True

    def _count_drop(self, envelope: Envelope) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "%s full (%d): dropped %d droppable message(s) so far, the latest %s",
                self._name,
                self.max_pending,
                self.dropped,
                envelope.task,
            )

    # --- the sender thread

    def _run(self) -> None:
        delay = self._retry_initial
        while True:
            with self._cond:
                while not self._queue and not self._abandon.is_set():
                    self._cond.wait()
                if self._abandon.is_set():
                    return
                entry = self._queue.popleft()
                key = entry.envelope.key
                if key is not None and self._by_key.get(key) is entry:
                    del self._by_key[key]
                self._in_flight = entry
            try:
                self._publish(entry.envelope)
            except _UNSENDABLE as exc:
                log.error("%s: cannot send %s (%s); dropped", self._name, entry.envelope.argsrepr, exc)
                self._sent(entry)
            except Exception as exc:
                self._requeue(entry, exc)
                self._abandon.wait(delay)
                delay = min(delay * 2, self._retry_max)
            else:
                self._sent(entry)
                delay = self._retry_initial

    def _sent(self, entry: _Entry) -> None:
        with self._cond:
            self._in_flight = None
            self._cond.notify_all()
            failing_since, self._failing_since = self._failing_since, None
        if failing_since is not None:
            log.info(
                "%s: broker reachable again after %.0fs; sending what was kept",
                self._name,
                time.monotonic() - failing_since,
            )

    def _requeue(self, entry: _Entry, exc: Exception) -> None:
        with self._cond:
            self._in_flight = None
            key = entry.envelope.key
            if key is None or key not in self._by_key:  # else a newer one of its kind waits
                self._queue.appendleft(entry)
                if key is not None:
                    self._by_key[key] = entry
            first = self._failing_since is None
            if first:
                self._failing_since = time.monotonic()
            waiting = len(self._queue)
            self._cond.notify_all()
        if first:
            log.warning(
                "%s: cannot reach the broker (%s); keeping %d message(s) and retrying",
                self._name,
                exc,
                waiting,
            )

    # --- the spool file

    def _load_spool(self) -> list[Envelope]:
        if self.spool is None or not self.spool.exists():
            return []
        envelopes: list[Envelope] = []
        try:
            lines = self.spool.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            log.error("%s: cannot read spool %s: %s; ignoring it", self._name, self.spool, exc)
            lines = []
        for number, line in enumerate(lines, start=1):
            try:
                envelopes.append(Envelope(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                log.error(
                    "%s: %s line %d is not a spooled message (%s); skipped",
                    self._name,
                    self.spool,
                    number,
                    exc,
                )
        self.spool.unlink(missing_ok=True)  # in memory now; spooled again if still unsent at close
        if envelopes:
            log.info("%s: sending %d message(s) an earlier process spooled", self._name, len(envelopes))
        return envelopes  # put through _add: the same bound applies

    def _append_to_spool(self, envelopes: list[Envelope]) -> None:
        if self.spool is None:
            log.error("%s: no spool file; %d message(s) lost", self._name, len(envelopes))
            return
        try:
            private_dir(self.spool.parent)
            fd = open_private(self.spool, os.O_WRONLY | os.O_APPEND)  # 0600, also one left looser
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                for envelope in envelopes:
                    fh.write(json.dumps(asdict(envelope), separators=(",", ":")) + "\n")
        except OSError as exc:
            log.error("%s: cannot spool %d message(s) to %s: %s", self._name, len(envelopes), self.spool, exc)
