"""Claiming due notices: one claimant per notice, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cp.alerts.claim import Attempt, claim_next, record_attempt
from cp.alerts.outbox import AlertDelivery, AlertNotice
from cp.db import session_scope

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


@pytest.fixture
def engine(engine_on_both: Engine) -> Iterator[Engine]:
    yield engine_on_both


def add_notices(engine: Engine, count: int, **fields: object) -> list[int]:
    with session_scope(engine) as session:
        rows = [
            AlertNotice(
                dedup_key=f"n-{uuid.uuid4().hex}",
                created_at=T0,
                notifier="ops-hook",
                group_key="daemon_offline",
                status="firing",
                body={"status": "firing"},
                **fields,
            )
            for _ in range(count)
        ]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows if r.id is not None]


def claim(engine: Engine, *, now: datetime = T0, token: str | None = None) -> AlertNotice | None:
    with session_scope(engine) as session:
        return claim_next(session, token=token or uuid.uuid4().hex, now=now, lease=LEASE)


def test_the_oldest_due_notice_is_claimed_with_a_lease(engine: Engine) -> None:
    first, _second = add_notices(engine, 2)
    notice = claim(engine, token="t1")
    assert notice is not None and notice.id == first
    assert notice.claimed_by == "t1" and notice.claimed_until == T0 + LEASE


def test_a_claimed_notice_is_not_claimed_again_while_its_lease_lasts(engine: Engine) -> None:
    add_notices(engine, 1)
    assert claim(engine) is not None
    assert claim(engine, now=T0 + LEASE - timedelta(seconds=1)) is None


def test_a_notice_whose_claimant_vanished_is_claimed_again_after_the_lease(engine: Engine) -> None:
    (only,) = add_notices(engine, 1)
    assert claim(engine) is not None
    again = claim(engine, now=T0 + LEASE + timedelta(seconds=1))
    assert again is not None and again.id == only


@pytest.mark.parametrize(
    "fields",
    [
        {"delivered_at": T0},
        {"given_up_at": T0},
        {"next_attempt_at": T0 + timedelta(seconds=1)},
    ],
    ids=["delivered", "given-up", "waiting-for-retry"],
)
def test_delivered_given_up_and_waiting_notices_are_not_claimed(
    engine: Engine, fields: dict[str, object]
) -> None:
    add_notices(engine, 1, **fields)
    assert claim(engine) is None


def test_a_notice_whose_retry_time_has_come_is_claimed(engine: Engine) -> None:
    add_notices(engine, 1, next_attempt_at=T0)
    assert claim(engine) is not None


def test_a_success_marks_the_notice_delivered_and_records_the_attempt_in_one_step(engine: Engine) -> None:
    add_notices(engine, 1)
    notice = claim(engine, token="t1")
    assert notice is not None
    with session_scope(engine) as session:
        kept = record_attempt(
            session,
            notice,
            token="t1",
            attempt=Attempt(ok=True, at=T0, duration_s=0.1, http_status=204),
            retry_at=None,
        )
    assert kept
    with Session(engine) as session:
        row = session.get(AlertNotice, notice.id)
        deliveries = session.exec(select(AlertDelivery)).all()
    assert row is not None and row.delivered_at == T0 and row.attempts == 1 and row.claimed_by is None
    assert [(d.notice_id, d.ok, d.http_status) for d in deliveries] == [(notice.id, True, 204)]
    assert claim(engine, now=T0 + LEASE * 2) is None


def test_a_failure_schedules_the_next_attempt_and_keeps_the_error(engine: Engine) -> None:
    add_notices(engine, 1)
    notice = claim(engine, token="t1")
    assert notice is not None
    retry_at = T0 + timedelta(seconds=5)
    with session_scope(engine) as session:
        attempt = Attempt(ok=False, at=T0, duration_s=0.1, http_status=500, error="HTTP 500: " + "x" * 5_000)
        record_attempt(session, notice, token="t1", attempt=attempt, retry_at=retry_at)
    with Session(engine) as session:
        row = session.get(AlertNotice, notice.id)
    assert row is not None and row.next_attempt_at == retry_at and row.attempts == 1
    assert row.last_error.startswith("HTTP 500: ") and len(row.last_error) == 1_000
    assert claim(engine, now=retry_at - timedelta(seconds=1)) is None
    assert claim(engine, now=retry_at) is not None


def test_a_failure_without_a_retry_time_gives_the_notice_up(engine: Engine) -> None:
    add_notices(engine, 1)
    notice = claim(engine, token="t1")
    assert notice is not None
    with session_scope(engine) as session:
        attempt = Attempt(ok=False, at=T0, duration_s=0.1, http_status=404, error="HTTP 404")
        record_attempt(session, notice, token="t1", attempt=attempt, retry_at=None)
    with Session(engine) as session:
        row = session.get(AlertNotice, notice.id)
    assert row is not None and row.given_up_at == T0 and row.delivered_at is None
    assert claim(engine, now=T0 + LEASE * 2) is None


def test_an_outcome_under_a_lost_claim_changes_nothing_but_is_recorded(engine: Engine) -> None:
    add_notices(engine, 1)
    stale = claim(engine, token="old")
    assert stale is not None
    assert claim(engine, now=T0 + LEASE + timedelta(seconds=1), token="new") is not None
    with session_scope(engine) as session:
        kept = record_attempt(
            session, stale, token="old", attempt=Attempt(ok=True, at=T0, duration_s=1.0), retry_at=None
        )
    assert not kept
    with Session(engine) as session:
        row = session.get(AlertNotice, stale.id)
        deliveries = session.exec(select(AlertDelivery)).all()
    assert row is not None and row.claimed_by == "new" and row.delivered_at is None
    assert len(deliveries) == 1


def test_claimants_racing_in_threads_take_every_notice_exactly_once(engine: Engine) -> None:
    ids = add_notices(engine, 40)
    taken: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def claimant() -> None:
        try:
            start.wait()
            while True:
                notice = claim(engine)
                if notice is None:
                    # a loser of a race on PostgreSQL sees nothing this time: look once more
                    notice = claim(engine)
                    if notice is None:
                        return
                with lock:
                    assert notice.id is not None
                    taken.append(notice.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimant) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(taken) == sorted(ids)  # all taken, none twice
