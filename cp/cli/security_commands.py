"""What `mycelial daemons enroll|revoke` and `mycelial keys ...` do (docs/security.md)."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from sqlmodel import col, select

from cp.cli.output import EXIT_BAD_INPUT, CliError
from cp.dispatch import trust_keys_message
from cp.models import DaemonKey, utcnow
from cp.protocol import NAME_PATTERN
from cp.runtime import ControlPlane
from cp.security.cp_keys import ControlPlaneKeys
from cp.security.enrolment import issue_token
from cp.security.enrolment import revoke as revoke_key
from cp.settings import Settings

_NAME = re.compile(NAME_PATTERN)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise CliError(
            f"invalid daemon name {name[:80]!r} (letters, digits, '_', '.', '-'; at most 63)",
            code=EXIT_BAD_INPUT,
        )


def enroll(settings: Settings, *, name: str, ttl: float | None) -> str:
    _check_name(name)
    seconds = settings.enroll_token_ttl if ttl is None else ttl
    if not 0 < seconds <= 30 * 86_400:
        raise CliError(f"--expires: {seconds:g} is not between 0 and 30 days in seconds", code=EXIT_BAD_INPUT)
    cp_key = ControlPlaneKeys(settings.home).current()
    with ControlPlane(settings).session() as session:
        token = issue_token(
            session, name=name, cp_public_key=cp_key.public_text, ttl=timedelta(seconds=seconds), now=utcnow()
        )
    return token.text()


def revoke(settings: Settings, *, name: str) -> str:
    _check_name(name)
    with ControlPlane(settings).session() as session:
        revoked, voided = revoke_key(session, name=name, now=utcnow())
    if revoked is None and not voided:
        raise CliError(f"daemon {name} has no key and no unused token to revoke", code=EXIT_BAD_INPUT)
    what = f"key {revoked} of daemon {name} revoked" if revoked else f"daemon {name} had no active key"
    return f"{what}; {voided} unused token(s) voided; its messages are refused from now on"


def show_keys(settings: Settings) -> dict[str, Any]:
    keys = ControlPlaneKeys(settings.home)
    shown: dict[str, Any] = {}
    for role, identity in (("current", keys.current()), ("previous", keys.previous())):
        shown[role] = {"key_id": identity.key_id, "public_key": identity.public_text} if identity else None
    return shown


def _announce(settings: Settings, cp: ControlPlane, keys: list[str]) -> int:
    """Tell every enrolled daemon which control-plane keys to trust; how many were told."""
    with cp.session() as session:
        names = list(session.exec(select(DaemonKey.name).where(col(DaemonKey.revoked_at).is_(None))))
    generation = int(time.time() * 1000)
    for name in names:
        cp.dispatcher.send(
            trust_keys_message(name, keys=keys, generation=generation, expires=settings.apply_config_expires)
        )
    return len(names)


def rotate(settings: Settings) -> str:
    keys = ControlPlaneKeys(settings.home)
    if keys.previous() is not None:
        raise CliError(
            "the key before the last rotation is still trusted: run `mycelial keys retire-previous` first",
            code=EXIT_BAD_INPUT,
        )
    cp = ControlPlane(settings)
    old = keys.current()
    # daemons learn the new key before anything is signed with it: signed by the old one, queued first
    new_identity = keys.prepare_next()
    told = _announce(settings, cp, [old.public_text, new_identity.public_text])
    keys.promote_next()
    return (
        f"signing with key {new_identity.key_id} from now on; {told} daemon(s) told to trust it beside "
        f"{old.key_id}; run `mycelial keys retire-previous` once every daemon has applied it"
    )


def retire_previous(settings: Settings) -> str:
    keys = ControlPlaneKeys(settings.home)
    previous = keys.previous()
    if previous is None:
        raise CliError("there is no previous key to retire", code=EXIT_BAD_INPUT)
    cp = ControlPlane(settings)
    told = _announce(settings, cp, [keys.current().public_text])
    keys.retire_previous()
    return f"key {previous.key_id} retired; {told} daemon(s) told to trust only {keys.current().key_id}"
