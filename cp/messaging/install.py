"""Put a Guard on a Celery app: its consumer class and its Redis transport."""

from __future__ import annotations

from typing import Any

from celery import Celery

from cp.messaging.guard import Guard
from cp.messaging.guarded_consumer import guarded_consumer_class
from cp.messaging.guarded_redis import guarded_amqp_class


def guarded_celery(main: str, *, broker: str, guard: Guard) -> Celery:
    """A Celery app whose consumers are guarded by ``guard``."""
    app = Celery(main, broker=broker, set_as_current=False, amqp=guarded_amqp_class(guard))
    app.conf.worker_consumer = guarded_consumer_class(guard)
    return app


def guard_of(app: Celery) -> Guard:
    """The Guard ``guarded_celery`` put on ``app``."""
    guard: Any = getattr(app.conf.worker_consumer, "guard", None)
    if not isinstance(guard, Guard):
        raise LookupError(
            f"Celery app {app.main!r} has no message guard (make it with cp.celery_app.make_celery)"
        )
    return guard
