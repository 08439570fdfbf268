"""Sends the spool's records to the control plane, one batch at a time, until each is stored.

One batch is in flight at a time: it is published, then the sender watches the control plane's
acknowledgement (the highest seq it stored, cp/logs/acks.py) and only then lets the spool forget
the records and sends the next batch. So batches arrive in order, and nothing is lost when the
broker loses a message (a restart without persistence), the control plane refuses one, or one
waits past its validity: a batch not acknowledged is sent again, at once when the broker
connection broke since it went out, else after ``ack_timeout`` (doubling up to
``max_ack_timeout``). A batch goes as soon as ``batch_records`` wait, else ``interval`` seconds after
the previous one; after a quiet spell a record goes at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from cp.protocol import LogBatch, dump, log_row
from workers.logs.spool import LogSpool

log = logging.getLogger(__name__)

BATCH_BYTES = 1 * 2**20  # of spooled lines per batch: far below the broker's message limit
ACK_POLL_INITIAL, ACK_POLL_MAX = 0.01, 0.5
PUBLISH_RETRY_MAX = 2.0


class AcksUnsupported(Exception):
    """The broker keeps no keys: a batch published counts as stored."""


@dataclass
class _InFlight:
    payload: dict[str, Any]
    last_seq: int
    dropped: int
    published_at: float | None = None
    broken: bool = False  # the broker connection failed since it was published
    timeout: float = 0.0


class LogShipper:
    def __init__(
        self,
        spool: LogSpool,
        *,
        name: str,
        publish: Callable[[dict[str, Any]], None],
        read_ack: Callable[[], int | None],
        interval: float,
        batch_records: int,
        ack_timeout: float,
        max_ack_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spool = spool
        self.name = name
        self._publish = publish
        self._read_ack = read_ack
        self.interval = interval
        self.batch_records = batch_records
        self.ack_timeout, self.max_ack_timeout = ack_timeout, max(ack_timeout, max_ack_timeout)
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sent = float("-inf")
        self._acks_supported = True
        self.batches_sent = 0
        self._drops_logged = 0
        self.resent = 0

    def notify(self) -> None:
        """A record was spooled."""
        self._wake.set()

    def is_sender(self) -> bool:
        return threading.current_thread() is self._thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mycelial-log-shipper", daemon=True)
            self._thread.start()

    def flush(self, *, timeout: float) -> bool:
        """Wait until every record spooled so far is stored; False if ``timeout`` passed first."""
        deadline = self._clock() + timeout
        while self._clock() < deadline:
            self._idle.clear()
            self._wake.set()
            if self._idle.wait(min(0.1, max(0.0, deadline - self._clock()))) and not self.spool.unread():
                return True
        return False

    def close(self, *, timeout: float) -> None:
        """Send for up to ``timeout`` seconds; what is left stays in the spool for the next process."""
        if self._thread is not None:
            self.flush(timeout=timeout)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.spool.close()

    # --- the sender thread

    def _run(self) -> None:
        batch: _InFlight | None = None
        while not self._stop.is_set():
            try:
                if batch is None:
                    batch = self._next_batch()
                    if batch is None:
                        continue
                if self._due(batch) and not self._send(batch):
                    continue
                if self._await_ack(batch):
                    self.spool.ack(batch.last_seq, reported_dropped=batch.dropped)
                    batch = None
            except Exception:  # never stop shipping: log (not captured: this thread) and go on
                log.exception("log shipper of %s: unexpected error; going on", self.name)
                self._stop.wait(1.0)

    def _next_batch(self) -> _InFlight | None:
        """The next batch once one is due, or None after waiting a while for records."""
        unread = self.spool.unread()
        if not unread:
            self._idle.set()
            self._wake.wait(self.interval)
            self._wake.clear()
            return None
        wait = self._last_sent + self.interval - self._clock()
        if unread < self.batch_records and wait > 0:
            self._stop.wait(min(wait, 0.05))  # more may come; recheck the count soon
            return None
        if self.spool.dropped_total > self._drops_logged:
            self._drops_logged = self.spool.dropped_total
            log.warning(
                "log spool of %s full: %d oldest record(s) dropped so far; reported with the next batch",
                self.name,
                self._drops_logged,
            )
        records = self.spool.read(limit=self.batch_records, max_bytes=BATCH_BYTES)
        if not records:
            return None
        dropped = self.spool.dropped
        try:
            rows = [log_row(r) for r in records]
            batch = LogBatch.model_validate({"name": self.name, "rows": rows, "dropped": dropped})
        except ValidationError as exc:  # cannot happen with records this module wrote; never loop on it
            log.error("log shipper of %s: %d records unsendable (%s); skipped", self.name, len(records), exc)
            self.spool.ack(records[-1]["seq"])
            return None
        return _InFlight(dump(batch), last_seq=records[-1]["seq"], dropped=dropped, timeout=self.ack_timeout)

    def _due(self, batch: _InFlight) -> bool:
        if batch.published_at is None or batch.broken:
            return True
        if self._clock() - batch.published_at >= batch.timeout:
            batch.timeout = min(batch.timeout * 2, self.max_ack_timeout)
            return True
        return False

    def _send(self, batch: _InFlight) -> bool:
        delay = 0.2
        while not self._stop.is_set():
            try:
                self._publish(batch.payload)
            except Exception as exc:
                if batch.published_at is None and not batch.broken:
                    log.warning(
                        "log shipper of %s: cannot reach the broker (%s); keeping records", self.name, exc
                    )
                batch.broken = True
                self._stop.wait(delay)
                delay = min(delay * 2, PUBLISH_RETRY_MAX)
                continue
            if batch.published_at is not None:
                self.resent += 1
            batch.published_at, batch.broken = self._clock(), False
            self._last_sent = batch.published_at
            self.batches_sent += 1
            return True
        return False

    def _await_ack(self, batch: _InFlight) -> bool:
        """True once the control plane stored the batch; False to send it again."""
        if not self._acks_supported:
            return True
        poll = ACK_POLL_INITIAL
        assert batch.published_at is not None
        while not self._stop.is_set():
            try:
                acked = self._read_ack()
            except AcksUnsupported:
                self._acks_supported = False
                return True
            except Exception:
                batch.broken = True  # the message may be gone with the broker: send it again
                self._stop.wait(poll)
                return False
            if acked is not None and acked >= batch.last_seq:
                return True
            if self._clock() - batch.published_at >= batch.timeout:
                return False
            self._stop.wait(poll)
            poll = min(poll * 2, ACK_POLL_MAX)
        return False
