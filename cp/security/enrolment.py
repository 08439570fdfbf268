"""Enrolment on the control plane: tokens issued and used once, keys registered and revoked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from cp.models import DaemonEvent, DaemonKey, EnrollmentToken
from cp.protocol import DaemonEnroll
from cp.security.keys import key_id, public_key_from_text, unb64
from cp.security.tokens import Token, proof_matches


@dataclass(frozen=True)
class Enrolled:
    name: str
    key_id: str


class EnrolmentRefused(ValueError):
    """Why an enrolment message was refused (one line, recorded as a security event)."""


def issue_token(session: Session, *, name: str, cp_public_key: str, ttl: timedelta, now: datetime) -> Token:
    token = Token.new(cp_public_key)
    session.add(
        EnrollmentToken(
            token_id=token.token_id,
            name=name,
            secret_digest=token.secret_digest,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    return token


def enroll(session: Session, message: DaemonEnroll, *, now: datetime) -> Enrolled:
    """Use the token once and register the key; EnrolmentRefused says why not."""
    token = session.exec(select(EnrollmentToken).where(EnrollmentToken.token_id == message.token_id)).first()
    if token is None:
        raise EnrolmentRefused(f"enrolment of {message.name}: unknown token {message.token_id}")
    if token.name != message.name:
        raise EnrolmentRefused(
            f"enrolment of {message.name}: token {message.token_id} was issued for {token.name}"
        )
    if token.used_at is not None:
        raise EnrolmentRefused(f"enrolment of {message.name}: token {message.token_id} was already used")
    if token.expires_at <= now:
        expired = f"{token.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        raise EnrolmentRefused(f"enrolment of {message.name}: token {message.token_id} expired at {expired}")
    if not proof_matches(
        token.secret_digest,
        message.proof,
        name=message.name,
        token_id=message.token_id,
        public_key=message.public_key,
    ):
        raise EnrolmentRefused(
            f"enrolment of {message.name}: the proof does not match token {message.token_id}"
        )
    public_key_from_text(message.public_key)  # a valid Ed25519 key (the authenticator checked it too)
    new_key = key_id(unb64(message.public_key))
    # two workers given the same message at once: only one marks the token used
    used = session.connection().execute(
        update(EnrollmentToken)
        .where(col(EnrollmentToken.id) == token.id, col(EnrollmentToken.used_at).is_(None))
        .values(used_at=now, used_by_key=new_key)
    )
    if used.rowcount != 1:
        raise EnrolmentRefused(f"enrolment of {message.name}: token {message.token_id} was already used")
    row = session.exec(select(DaemonKey).where(DaemonKey.name == message.name)).first()
    before = row.key_id if row is not None and row.revoked_at is None else None
    if row is None:
        row = DaemonKey(name=message.name, key_id=new_key, public_key=message.public_key, enrolled_at=now)
    else:
        row.key_id, row.public_key, row.enrolled_at, row.revoked_at = new_key, message.public_key, now, None
    session.add(row)
    reason = f"key {new_key}" + (f" replaces key {before}" if before and before != new_key else "")
    session.add(DaemonEvent(at=now, daemon=message.name, kind="enrolled", reason=reason))
    return Enrolled(name=message.name, key_id=new_key)


def revoke(session: Session, *, name: str, now: datetime) -> tuple[str | None, int]:
    """Revoke the daemon's key and its unused tokens: (the revoked key id or None, tokens voided)."""
    row = session.exec(select(DaemonKey).where(DaemonKey.name == name)).first()
    revoked = None
    if row is not None and row.revoked_at is None:
        row.revoked_at = now
        session.add(row)
        revoked = row.key_id
    voided = session.connection().execute(
        update(EnrollmentToken)
        .where(col(EnrollmentToken.name) == name, col(EnrollmentToken.used_at).is_(None))
        .values(used_at=now, used_by_key="revoked")
    )
    if revoked or voided.rowcount:
        what = f"key {revoked}" if revoked else "no active key"
        session.add(
            DaemonEvent(
                at=now,
                daemon=name,
                kind="key_revoked",
                reason=f"{what}; {voided.rowcount} unused token(s) voided",
            )
        )
    return revoked, int(voided.rowcount or 0)
