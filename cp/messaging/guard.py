"""What a guarded consumer does with a message it will not process: log, dead-letter, record."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from cp.messaging.dead_letters import store
from cp.messaging.envelope_check import MessageLimits, Rejection
from cp.messaging.recorder import RejectionRecorder, Sink, TokenBucket
from cp.metrics.counters import REJECTED, SharedCounters
from cp.models import utcnow
from cp.settings import Settings

if TYPE_CHECKING:
    from cp.security.signer import Signer

log = logging.getLogger(__name__)
LOG_LINES_PER_SECOND = 5.0

RedisScope = Callable[[], AbstractContextManager[Any]]


class Authenticator(Protocol):
    """Decides whether a well-formed task message was really sent by who may send it here."""

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
        """The reason to refuse the message, or None to let it through."""

    def processed(self, *, headers: Mapping[str, Any], redis: RedisScope | None) -> None:
        """The message was handled and acknowledged: a copy of it from now on is a replay."""


class Guard:
    """One per Celery app: the limits its consumers apply and where their rejections go."""

    def __init__(self, settings: Settings) -> None:
        self.limits = MessageLimits.from_settings(settings)
        self.keep = settings.dead_letter_keep
        self.copy_chars = settings.dead_letter_copy_chars
        self._per_second = settings.rejection_events_per_second
        self._recorder: RejectionRecorder | None = None
        # who signs what this app publishes, and who checks what its consumers receive
        self.signer: Signer | None = None
        self.authenticator: Authenticator | None = None
        # messages refused per kind since the process started (rejected or not authenticated)
        self.refused: Counter[str] = Counter()
        # the same, by task, shared with the metrics process (cp/metrics/worker_counters.py)
        self.counters: SharedCounters | None = None
        # a flood of bad messages must not become a flood of log lines
        self._log_bucket = TokenBucket(rate=LOG_LINES_PER_SECOND, burst=10 * LOG_LINES_PER_SECOND)
        self._unlogged = 0

    def record_with(self, sink: Sink) -> None:
        """Record every (rate-limited) rejection through ``sink`` from now on."""
        self._recorder = RejectionRecorder(sink, per_second=self._per_second)

    def record(self, rejection: Rejection) -> None:
        """Record an event for a message refused after the guard let it through (its payload)."""
        if self._recorder is not None:
            self._recorder.offer(rejection)

    def count_refused(self, task: str | None, kind: str) -> None:
        """One message refused: for /metrics, by task (an unknown task name counts as ``other``)."""
        if self.counters is not None:
            self.counters.add(REJECTED, self.counters.task_label(task), kind)

    def reject(self, rejection: Rejection, *, redis: RedisScope | None, exc_info: bool = False) -> None:
        """Log it (rate-limited), keep it in its queue's dead-letter list, record an event (rate-
        limited too); never raises."""
        try:
            self.refused[rejection.kind] += 1
            self.count_refused(rejection.task, rejection.kind)
            if self._log_bucket.take():
                more, self._unlogged = self._unlogged, 0
                log.error(
                    "rejected a message on %s (task %s, id %s): %s%s",
                    rejection.queue,
                    rejection.task or "?",
                    rejection.task_id or "?",
                    rejection.reason,
                    f" ({more} more rejected since the last line, not logged one by one)" if more else "",
                    exc_info=exc_info,
                )
            else:
                self._unlogged += 1
            if redis is not None and self.keep > 0:
                try:
                    with redis() as client:
                        store(client, rejection, keep=self.keep, now=utcnow())
                except Exception as exc:  # the broker may be going away; the log line stays
                    log.warning("could not dead-letter a message of %s: %s", rejection.queue, exc)
            self.record(rejection)
        except Exception:
            log.exception("rejecting a message on %s failed", rejection.queue)
