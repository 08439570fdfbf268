"""The ``cp.deliver_notices`` task: beat sends it every ``notify_interval`` seconds to the control
queue; whichever worker takes it delivers what is due (several at once are safe: cp/alerts/claim.py)."""

from __future__ import annotations

import logging
import random
import threading
from datetime import timedelta

from celery import Celery

from cp.alerts.backoff import RetryPolicy
from cp.alerts.delivery import DeliverySettings, NotifierDirectory, deliver_due
from cp.alerts.senders import make_sender
from cp.models import utcnow
from cp.protocol import CP_DELIVER_NOTICES
from cp.runtime import ControlPlane
from cp.settings import Settings

log = logging.getLogger(__name__)


def delivery_settings(settings: Settings) -> DeliverySettings:
    return DeliverySettings(
        policy=RetryPolicy(
            first_delay=settings.notify_first_retry,
            max_delay=max(settings.notify_first_retry, settings.notify_max_retry),
            give_up_after=settings.notify_give_up_after,
            max_attempts=settings.notify_max_attempts,
        ),
        lease=timedelta(seconds=settings.notify_claim_lease),
    )


def register_delivery_task(app: Celery, cp: ControlPlane) -> None:
    """Register ``cp.deliver_notices`` on ``app``; housekeeping, so no task events (Flower)."""
    running = threading.Lock()
    directory = NotifierDirectory()
    send = make_sender()
    rng = random.Random()

    @app.task(name=CP_DELIVER_NOTICES, shared=False, ignore_result=True, send_events=False)
    def deliver_notices() -> None:
        # a step still going in this process carries on; overlapping ones would only queue
        if not running.acquire(blocking=False):
            return
        try:
            result = deliver_due(
                cp.session,
                send=send,
                directory=directory,
                settings=delivery_settings(cp.settings),
                now=utcnow,
                rng=rng,
            )
            if result.delivered or result.failed or result.given_up:
                log.info(
                    "notices: %d delivered, %d to retry, %d given up",
                    result.delivered,
                    result.failed,
                    result.given_up,
                )
        except Exception:
            log.exception("notice delivery step failed; the next beat tick tries again")
        finally:
            running.release()
