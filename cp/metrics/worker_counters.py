"""A control-plane process's counters (cp/metrics/counters.py), flushed to the broker by a thread
of its own: a worker counts tasks handled, messages refused, events and finished runs committed;
beat counts the runs its scheduler finishes (skipped fires, runs of removed pipelines)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.signals import (
    task_postrun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from cp.messaging.broker_client import broker_client
from cp.messaging.guard import Guard
from cp.messaging.install import guard_of
from cp.metrics.commit_counts import count_commits
from cp.metrics.counters import HANDLED, CounterFlusher, RedisScope, SharedCounters
from cp.settings import Settings

CP_TASK_PREFIX = "cp."


def _redis(app: Celery) -> RedisScope:
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

    return redis


def _counters(app: Celery) -> SharedCounters:
    def is_known_task(name: str) -> bool:
        return name.startswith(CP_TASK_PREFIX) and name in app.tasks

    return SharedCounters(is_known_task=is_known_task)


def count_in_beat(app: Celery, settings: Settings) -> CounterFlusher:
    """Flush what this beat's transactions commit (counted by the counters its app's cp tasks
    installed, else by new ones) until the returned flusher is stopped."""
    counters = guard_of(app).counters
    if counters is None:
        counters = _counters(app)
        count_commits(counters)
    flusher = CounterFlusher(counters, _redis(app), interval=settings.metrics_counter_flush_interval)
    flusher.start()
    return flusher


def install_worker_counters(app: Celery, guard: Guard, settings: Settings) -> SharedCounters:
    """Count on this app's worker from now on. The flusher starts with the worker, and again in
    each pool process a prefork worker forks (a thread does not survive a fork)."""
    counters = _counters(app)
    guard.counters = counters
    running: list[CounterFlusher] = []  # this process's flusher, once started

    def handled(sender: Any = None, **_: Any) -> None:
        name = getattr(sender, "name", None)
        if getattr(sender, "app", None) is app and isinstance(name, str):
            counters.add(HANDLED, counters.task_label(name))

    task_postrun.connect(handled, weak=False)
    count_commits(counters)

    def start(**_: Any) -> None:
        running.clear()  # a forked child inherits its parent's list, not its thread
        flusher = CounterFlusher(counters, _redis(app), interval=settings.metrics_counter_flush_interval)
        flusher.start()
        running.append(flusher)

    def stop(**_: Any) -> None:
        while running:
            running.pop().stop()

    def start_in_child(**_: Any) -> None:
        counters.take()  # the parent's counts, copied by the fork: the parent flushes them
        start()

    worker_ready.connect(start, weak=False)
    worker_process_init.connect(start_in_child, weak=False)
    worker_shutdown.connect(stop, weak=False)
    worker_process_shutdown.connect(stop, weak=False)
    return counters
