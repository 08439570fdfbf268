"""The notification outbox: evaluation writes one ``AlertNotice`` per transition and target, delivery
sends it and records every attempt in ``AlertDelivery`` (docs/notifications.md).

``dedup_key`` is unique, so a second evaluator that decides the same transition cannot add a second
notice; it is also the ``webhook-id`` receivers de-duplicate on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from cp.models import UTCDateTime

MAX_NOTICE_ERROR_CHARS = 1_000  # last_error and AlertDelivery.error


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


class AlertNotice(SQLModel, table=True):
    """One notice of a firing or resolved group, for one notifier; delivered exactly once."""

    # the delivery task's claim query: not yet delivered nor given up, due
    __table_args__ = (Index("ix_alertnotice_due", "delivered_at", "given_up_at", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str = Field(unique=True, index=True, max_length=255)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    notifier: str = Field(index=True, max_length=63)
    group_key: str = Field(max_length=255)
    status: str = Field(max_length=16)  # firing | resolved
    body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    delivered_at: datetime | None = _ts()
    given_up_at: datetime | None = _ts()  # no further attempt: permanent error or too old
    attempts: int = 0
    next_attempt_at: datetime | None = _ts()  # None: due at once
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False))
    claimed_by: str | None = Field(default=None, max_length=64)  # the claim token of one attempt
    claimed_until: datetime | None = _ts()


class AlertDelivery(SQLModel, table=True):
    """One attempt to deliver a notice, successful or not."""

    id: int | None = Field(default=None, primary_key=True)
    notice_id: int = Field(index=True)
    notifier: str = Field(max_length=63)
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    ok: bool
    http_status: int | None = None
    error: str = Field(default="", sa_column=Column(Text, nullable=False))
    duration_s: float = 0.0
