"""The delivery step: claim a due notice, send it, record the attempt; repeat until none is due or
the step's time is up. Plain function over a session factory, a sender and a clock
(docs/notifications.md explains why each notice goes out exactly once)."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from cp.alerts.backoff import RetryPolicy
from cp.alerts.claim import Attempt, claim_next, record_attempt
from cp.alerts.notifier_spec import load_notifiers
from cp.alerts.outbox import AlertNotice
from cp.alerts.senders import SendResult
from cp.models import ConfigVersion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliverySettings:
    policy: RetryPolicy
    lease: timedelta  # longer than the slowest send: a webhook's timeout is at most 60 s
    budget_s: float = 10.0  # one step stops claiming after this long; the next beat tick goes on


@dataclass
class StepResult:
    delivered: int = 0
    failed: int = 0
    given_up: int = 0


class NotifierDirectory:
    """The notifiers of the newest applied configuration, read again only when a version is added."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._notifiers: dict[str, Any] = {}

    def get(self, session: Session, name: str) -> Any:
        newest = session.exec(
            select(ConfigVersion.id).order_by(col(ConfigVersion.id).desc()).limit(1)
        ).first()
        if newest != self._version:
            row = session.get(ConfigVersion, newest) if newest is not None else None
            self._notifiers = load_notifiers(row.document.get("notifiers", [])) if row is not None else {}
            self._version = newest
        return self._notifiers.get(name)


def deliver_due(
    sessions: Callable[[], AbstractContextManager[Session]],
    *,
    send: Callable[[Any, AlertNotice], SendResult],
    directory: NotifierDirectory,
    settings: DeliverySettings,
    now: Callable[[], datetime],
    rng: random.Random,
) -> StepResult:
    """Deliver due notices one at a time until none is due or ``settings.budget_s`` has passed."""
    result = StepResult()
    started = time.monotonic()
    for token in _tokens():
        if time.monotonic() - started >= settings.budget_s:
            break
        with sessions() as session:  # committed on leaving: the claim is visible before the send
            notice = claim_next(session, token=token, now=now(), lease=settings.lease)
            spec = directory.get(session, notice.notifier) if notice is not None else None
        if notice is None:
            break
        begun = time.monotonic()
        if spec is None:
            sent = SendResult(
                ok=False, error=f"notifier {notice.notifier} is not configured", retryable=False
            )
        else:
            try:
                sent = send(spec, notice)
            except Exception as exc:  # a sender bug must not leave the notice claimed for a lease
                log.exception("notifier %s failed on notice %s", notice.notifier, notice.id)
                sent = SendResult(ok=False, error=f"internal error: {type(exc).__name__}")
        attempt = Attempt(
            ok=sent.ok,
            at=now(),
            duration_s=time.monotonic() - begun,
            http_status=sent.http_status,
            error=sent.error,
        )
        retry_at = None
        if not sent.ok and sent.retryable:
            retry_at = settings.policy.next_attempt(
                attempts=notice.attempts + 1, created_at=notice.created_at, now=attempt.at, rng=rng
            )
        with sessions() as session:
            kept = record_attempt(session, notice, token=token, attempt=attempt, retry_at=retry_at)
        if not kept:
            log.warning(
                "notice %s: claim expired during the attempt; another worker may repeat it", notice.id
            )
        if sent.ok:
            result.delivered += 1
        elif retry_at is None:
            result.given_up += 1
            log.error("notice %s to %s given up: %s", notice.dedup_key, notice.notifier, sent.error)
        else:
            result.failed += 1
            log.warning(
                "notice %s to %s failed (attempt %d): %s",
                notice.dedup_key,
                notice.notifier,
                notice.attempts + 1,
                sent.error,
            )
    return result


def _tokens() -> Iterator[str]:
    while True:
        yield uuid.uuid4().hex
