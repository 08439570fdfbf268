"""Redis 7 ACL users for the broker: each daemon confined to its own keys, the control plane apart.

A daemon's user is derived from what kombu 5.7's Redis transport and Celery 5.7 actually do for a
consumer of one queue that publishes to ``mycelial.cp`` (docs/security.md, "Broker access
control", lists every key, command and channel and why):

- its queue ``mycelial.daemon.<name>`` and kombu's priority siblings (``<queue>\\x06\\x16{3,6,9}``):
  BRPOP, LLEN, and LPUSH/RPUSH when a held message is restored;
- its unacknowledged-message keys (cp/celery_app.py ``unacked_keys``): a hash, a sorted index and
  a lock (redis-py's lock releases by EVALSHA; ACL checks every command a script calls);
- write-only: ``mycelial.cp`` (LPUSH), its heartbeat key, its dead-letter list, its own queue's
  binding sets, the remote-control binding sets and pidbox reply lists;
- remote control: PSUBSCRIBE to ``/<db>.celery.pidbox`` only, replies by LPUSH;
- task events for Flower: PUBLISH to ``/<db>.celeryev/*`` only, in a selector of its own, so the
  daemon cannot PUBLISH on the remote-control channel it may subscribe to.

Every key is exact except the sibling lists, whose pattern cannot match another daemon's keys: the
character after the name must be one no daemon name contains (kombu's separator). Patterns stay
plain ASCII so the same rules work in ``ACL SETUSER`` and in an ACL file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cp.celery_app import daemon_hostname, unacked_keys
from cp.messaging.dead_letters import dead_letter_key
from cp.protocol import CP_QUEUE, NAME_PATTERN, daemon_queue, heartbeat_key, log_ack_key

CONTROL_PLANE_USER = "mycelial-cp"
DAEMON_USER_PREFIX = "mycelial-daemon-"
MIN_PASSWORD_CHARS = 16

# kombu 5.7's Redis transport: binding tables, remote-control (pidbox) and event exchanges
BINDING_PREFIX = "_kombu.binding."
BINDING_PERMANENT_PREFIX = "_kombu.binding_permanent."
PIDBOX_EXCHANGE = "celery.pidbox"
PIDBOX_REPLY_EXCHANGE = "reply.celery.pidbox"
EVENT_EXCHANGE = "celeryev"
# a priority sibling is the queue name, kombu's separator "\x06\x16" and the step 3, 6 or 9; the
# class excludes every character of a daemon name, so no other daemon's key can match
_NOT_A_NAME_CHAR = r"[^A-Za-z0-9_.\-]"
PRIORITY_SIBLINGS = f"{_NOT_A_NAME_CHAR}?[369]"

_DAEMON_NAME = re.compile(NAME_PATTERN)
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")

# Everything a daemon's consumer, publisher, heartbeat and dead-lettering send, and nothing else.
DAEMON_COMMANDS = (
    # connection: redis-py says HELLO (with AUTH), kombu PINGs, SELECT only of the broker's db
    "+ping",
    "+hello",
    "+auth",
    # consuming (BRPOP, kombu's basic_get RPOP), declaring (LLEN), restoring (LPUSH/RPUSH),
    # publishing to mycelial.cp and pidbox replies (LPUSH), dead letters (LPUSH, LTRIM), deleting
    # the remote-control queue on close and releasing the restore lock (DEL)
    "+brpop",
    "+rpop",
    "+llen",
    "+lpush",
    "+rpush",
    "+ltrim",
    "+del",
    # unacked messages: hash, sorted index, restore transaction, lock (SET NX PX, script release)
    "+hset",
    "+hget",
    "+hdel",
    "+hscan",
    "+zadd",
    "+zrem",
    "+zrange",
    "+set",
    "+get",
    "+multi",
    "+exec",
    "+discard",
    "+watch",
    "+unwatch",
    "+evalsha",
    "+script|load",
    # bindings: its own queue's and its remote-control queue's (SADD on declare, SREM on close),
    # the reply exchange's table read to route a reply
    "+sadd",
    "+srem",
    "+smembers",
    # remote control: receives broadcasts (revoke, ping, inspect); PUBLISH is not granted here
    "+psubscribe",
    "+punsubscribe",
)


class BrokerAclError(ValueError):
    """A name, database or password the rules cannot be made from."""


@dataclass(frozen=True)
class BrokerUser:
    """One Redis ACL user: its name and its rules (passwords only as SHA-256 hashes)."""

    name: str
    rules: tuple[str, ...]

    def setuser_args(self) -> list[str]:
        """The arguments of ``ACL SETUSER`` (for a Redis client's ``execute_command``)."""
        return ["ACL", "SETUSER", self.name, *self.rules]

    def setuser_line(self) -> str:
        """An ``ACL SETUSER`` command for redis-cli (Redis joins a selector split at its space)."""
        return " ".join(self.setuser_args())

    def acl_file_line(self) -> str:
        """The user's line in a Redis ACL file (``aclfile``; loaded at start or by ``ACL LOAD``)."""
        return " ".join(["user", self.name, *self.rules])

    def as_json(self) -> dict[str, Any]:
        return {
            "user": self.name,
            "rules": list(self.rules),
            "acl_setuser": self.setuser_line(),
            "acl_file": self.acl_file_line(),
        }


def password_hash(password: str) -> str:
    """The SHA-256 hex digest Redis accepts as ``#<hash>``, so no rule carries a password."""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def check_password(password: str, *, where: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise BrokerAclError(
            f"{where}: the password is too short ({len(password)} characters; at least {MIN_PASSWORD_CHARS})"
        )
    if not password.isprintable() or any(c.isspace() for c in password):
        raise BrokerAclError(f"{where}: the password must be printable characters without spaces")


def daemon_user_name(daemon: str) -> str:
    return f"{DAEMON_USER_PREFIX}{daemon}"


def daemon_user(daemon: str, *, passwords: Sequence[str], db: int = 0, user: str | None = None) -> BrokerUser:
    """The broker user of daemon ``daemon`` on Redis database ``db`` (the one in its broker URL)."""
    if not _DAEMON_NAME.match(daemon):
        raise BrokerAclError(f"invalid daemon name {daemon!r} (letters, digits, '_', '.', '-'; at most 63)")
    name = _user_name(user if user is not None else daemon_user_name(daemon))
    if isinstance(db, bool) or not isinstance(db, int) or db < 0:
        raise BrokerAclError(f"invalid database number {db!r} (0 or more)")
    queue = daemon_queue(daemon)
    pidbox = f"{daemon_hostname(daemon)}.{PIDBOX_EXCHANGE}"
    unacked = unacked_keys(daemon=daemon)
    read_write = [
        queue,
        queue + PRIORITY_SIBLINGS,
        unacked["unacked_key"],
        unacked["unacked_index_key"],
        unacked["unacked_mutex_key"],
        pidbox,
        pidbox + PRIORITY_SIBLINGS,
    ]
    write_only = [
        CP_QUEUE,
        heartbeat_key(daemon),
        dead_letter_key(queue),
        BINDING_PREFIX + queue,
        BINDING_PERMANENT_PREFIX + queue,
        BINDING_PREFIX + PIDBOX_EXCHANGE,
        BINDING_PERMANENT_PREFIX + PIDBOX_EXCHANGE,
        f"*.{PIDBOX_REPLY_EXCHANGE}",
    ]
    # its log acknowledgement is written by the control plane only (docs/logs.md)
    read_only = [BINDING_PREFIX + PIDBOX_REPLY_EXCHANGE, log_ack_key(daemon)]
    fanout = f"/{db}."  # kombu's fanout channel prefix names the database
    return BrokerUser(
        name=name,
        rules=(
            "reset",
            "on",
            *_password_rules(passwords, where=f"user {name}"),
            "resetchannels",
            "-@all",
            *DAEMON_COMMANDS,
            f"+select|{db}",
            *(f"~{key}" for key in read_write),
            *(f"%W~{key}" for key in write_only),
            *(f"%R~{key}" for key in read_only),
            f"&{fanout}{PIDBOX_EXCHANGE}",
            f"(+publish &{fanout}{EVENT_EXCHANGE}/*)",
        ),
    )


def control_plane_user(*, passwords: Sequence[str], user: str | None = None) -> BrokerUser:
    """The control plane's user (workers, beat, CLI, Flower, ``celery -A cp.admin``): every key
    and channel and every command but Redis's ``@dangerous`` ones (ACL, CONFIG, FLUSHALL, KEYS,
    MONITOR, SHUTDOWN...), which nothing of the control plane sends."""
    name = _user_name(user if user is not None else CONTROL_PLANE_USER)
    return BrokerUser(
        name=name,
        rules=(
            "reset",
            "on",
            *_password_rules(passwords, where=f"user {name}"),
            "~*",
            "&*",
            "+@all",
            "-@dangerous",
        ),
    )


def _user_name(name: str) -> str:
    if not _USER_NAME.match(name):
        raise BrokerAclError(
            f"invalid broker user name {name!r} (letters, digits, '_', '.', '@', '-'; at most 128)"
        )
    return name


def _password_rules(passwords: Sequence[str], *, where: str) -> list[str]:
    if not passwords:
        raise BrokerAclError(f"{where}: no password")
    for password in passwords:
        check_password(password, where=where)
    return [f"#{password_hash(p)}" for p in dict.fromkeys(passwords)]
