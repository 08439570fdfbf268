"""A control-plane worker's counters (cp/metrics/counters.py): tasks handled, messages refused,
events and finished runs committed; flushed to the broker by a thread of the worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.signals import task_postrun, worker_process_shutdown, worker_ready, worker_shutdown

from cp.messaging.broker_client import broker_client
from cp.messaging.guard import Guard
from cp.metrics.commit_counts import count_commits
from cp.metrics.counters import HANDLED, CounterFlusher, SharedCounters
from cp.settings import Settings

CP_TASK_PREFIX = "cp."


def install_worker_counters(app: Celery, guard: Guard, settings: Settings) -> SharedCounters:
    """Count on this app's worker from now on; the flusher starts with the worker."""

    def is_known_task(name: str) -> bool:
        return name.startswith(CP_TASK_PREFIX) and name in app.tasks

    counters = SharedCounters(is_known_task=is_known_task)
    guard.counters = counters

    @contextmanager
    def redis() -> Iterator[Any]:
        opened = broker_client(app)
        if opened is None:
            raise RuntimeError("the broker is not Redis")
        connection, client = opened
        try:
            yield client
        finally:
            connection.release()

    flusher = CounterFlusher(counters, redis, interval=settings.metrics_counter_flush_interval)

    def handled(sender: Any = None, **_: Any) -> None:
        name = getattr(sender, "name", None)
        if getattr(sender, "app", None) is app and isinstance(name, str):
            counters.add(HANDLED, counters.task_label(name))

    task_postrun.connect(handled, weak=False)
    count_commits(counters)
    started = [False]

    def start(**_: Any) -> None:
        if not started[0]:
            started[0] = True
            flusher.start()

    def stop(**_: Any) -> None:
        if started[0]:
            started[0] = False
            flusher.stop()

    worker_ready.connect(start, weak=False)
    worker_shutdown.connect(stop, weak=False)
    worker_process_shutdown.connect(stop, weak=False)
    return counters
