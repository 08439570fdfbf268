"""The control plane's own counters, shared by its processes through one Redis hash.

Workers count in memory (a dict increment under a lock, nothing on the message path waits for
Redis) and a thread adds what they counted to the hash ``mycelial.metrics.counters`` with one
HINCRBY pipeline every ``flush_interval`` seconds; the metrics process reads the hash at scrape
time. Totals are summed across processes and survive their restarts (not a flush of Redis: a
counter reset, which Prometheus handles). Fields are ``metric|label|label``; every label value is
bounded here, so a hostile message cannot grow the hash: task names ``is_known_task`` refuses count
as ``other``, and pipelines past ``max_keys`` distinct fields are dropped (and counted).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

log = logging.getLogger(__name__)

COUNTERS_KEY = "mycelial.metrics.counters"
SEPARATOR = "|"
OTHER = "other"
MAX_KEYS = 100_000  # distinct fields one process keeps between flushes

HANDLED = "handled"  # task
REJECTED = "rejected"  # task, kind
EVENTS = "events"  # kind
RUNS_FINISHED = "runs_finished"  # pipeline, state
ROWS_WRITTEN = "rows_written"  # pipeline
DROPPED = "dropped"  # (no label) increments not kept because max_keys was reached

RedisScope = Callable[[], AbstractContextManager[Any]]


def field(metric: str, *labels: str) -> str:
    return SEPARATOR.join((metric, *(label.replace(SEPARATOR, "_") for label in labels)))


def parse_field(text: str) -> tuple[str, tuple[str, ...]]:
    metric, *labels = text.split(SEPARATOR)
    return metric, tuple(labels)


class SharedCounters:
    """What this process counted since its last flush."""

    def __init__(
        self, *, is_known_task: Callable[[str], bool] = lambda _: False, max_keys: int = MAX_KEYS
    ) -> None:
        self._is_known_task = is_known_task
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()

    def task_label(self, task: str | None) -> str:
        return task if task is not None and self._is_known_task(task) else OTHER

    def add(self, metric: str, *labels: str, amount: int = 1) -> None:
        key = field(metric, *labels)
        with self._lock:
            if key not in self._pending and len(self._pending) >= self._max_keys:
                self._pending[field(DROPPED)] += amount
                return
            self._pending[key] += amount

    def take(self) -> dict[str, int]:
        with self._lock:
            taken, self._pending = dict(self._pending), Counter()
        return {k: v for k, v in taken.items() if v}

    def give_back(self, taken: dict[str, int]) -> None:
        """Counts a failed flush could not write: kept for the next one."""
        with self._lock:
            self._pending.update(taken)

    def flush(self, redis: RedisScope) -> int:
        """Add what was counted to the shared hash in one pipeline; the number of fields written."""
        taken = self.take()
        if not taken:
            return 0
        try:
            with redis() as client:
                pipe = client.pipeline(transaction=False)
                for key, amount in taken.items():
                    pipe.hincrby(COUNTERS_KEY, key, amount)
                pipe.execute()
        except Exception:
            self.give_back(taken)
            raise
        return len(taken)


class CounterFlusher:
    """A daemon thread that flushes ``counters`` every ``interval`` seconds until stopped."""

    def __init__(self, counters: SharedCounters, redis: RedisScope, *, interval: float) -> None:
        self.counters = counters
        self._redis = redis
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mycelial-metrics-counters", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)
        self._flush()  # the last counts of a clean shutdown

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush()

    def _flush(self) -> None:
        try:
            self.counters.flush(self._redis)
        except Exception as exc:  # the broker is away: the counts wait in memory
            log.warning("could not write the control plane's counters to the broker: %s", exc)


def parse_counters(raw: dict[Any, Any] | None) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """Every shared counter as (metric, labels, value), from HGETALL's reply."""
    for key, value in (raw or {}).items():
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        try:
            amount = int(value)
        except (TypeError, ValueError):
            continue
        metric, labels = parse_field(text)
        yield metric, labels, amount
