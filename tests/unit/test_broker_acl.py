"""Specification of the broker's ACL users: a daemon's rules reach its own keys only, passwords
appear only as hashes, and every pattern is checked against other daemons' keys with Redis's own
glob rules (tests/test_broker_acl.py runs them on a real Redis 7)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cp.broker_acl import (
    BrokerAclError,
    BrokerUser,
    control_plane_user,
    daemon_user,
    password_hash,
)
from cp.celery_app import daemon_hostname, unacked_keys
from cp.messaging.dead_letters import dead_letter_key
from cp.protocol import daemon_queue, heartbeat_key

PASSWORD = "correct-horse-battery-staple"
SEP = "\x06\x16"  # kombu's separator in priority siblings and binding members


def redis_glob(pattern: str, text: str) -> bool:
    """Redis's ``stringmatchlen`` (util.c) as a regular expression: ``*``, ``?``, ``[...]`` with
    ``^`` negation, ranges and ``\\`` escapes, outside and inside classes."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i += 1
            negate = i < len(pattern) and pattern[i] == "^"
            i += negate
            parts = []
            while i < len(pattern) and pattern[i] != "]":
                if pattern[i] == "\\" and i + 1 < len(pattern):
                    i += 1
                    parts.append(re.escape(pattern[i]))
                elif i + 2 < len(pattern) and pattern[i + 1] == "-":
                    parts.append(f"{re.escape(pattern[i])}-{re.escape(pattern[i + 2])}")
                    i += 2
                else:
                    parts.append(re.escape(pattern[i]))
                i += 1
            out.append(f"[{'^' if negate else ''}{''.join(parts)}]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(out), text, flags=re.DOTALL) is not None


def key_patterns(user: BrokerUser) -> dict[str, list[str]]:
    """The root selector's key patterns by permission: ``rw``, ``w`` and ``r``."""
    found: dict[str, list[str]] = {"rw": [], "w": [], "r": []}
    for rule in user.rules:
        if rule.startswith("~"):
            found["rw"].append(rule[1:])
        elif rule.startswith("%W~"):
            found["w"].append(rule[3:])
        elif rule.startswith("%R~"):
            found["r"].append(rule[3:])
    return found


def keys_of(daemon: str) -> list[str]:
    """Every key kombu, Celery and mycelial use for ``daemon`` (its queue with siblings, held
    messages, heartbeat, dead letters, bindings, remote-control queue)."""
    queue = daemon_queue(daemon)
    pidbox = f"{daemon_hostname(daemon)}.celery.pidbox"
    return [
        *(queue + suffix for suffix in ("", f"{SEP}3", f"{SEP}6", f"{SEP}9")),
        *unacked_keys(daemon=daemon).values(),
        heartbeat_key(daemon),
        dead_letter_key(queue),
        f"_kombu.binding.{queue}",
        f"_kombu.binding_permanent.{queue}",
        *(pidbox + suffix for suffix in ("", f"{SEP}3", f"{SEP}6", f"{SEP}9")),
    ]


def allowed(user: BrokerUser, key: str, *, permission: str) -> bool:
    """Whether the root selector grants ``permission`` ("read" or "write") on ``key``."""
    patterns = key_patterns(user)
    wanted = patterns["rw"] + (patterns["r"] if permission == "read" else patterns["w"])
    return any(redis_glob(p, key) for p in wanted)


def test_the_glob_port_follows_redis_on_the_patterns_used() -> None:
    assert redis_glob("a[^b\\-]?[369]", f"a{SEP}3")
    assert not redis_glob("a[^b\\-]?[369]", "a-x3")
    assert not redis_glob("a[^b\\-]?[369]", "ab\x163")
    assert redis_glob("*.reply.celery.pidbox", "e2cd-3d6d.reply.celery.pidbox")
    assert not redis_glob("mycelial.cp", "mycelial.cp.control")


def test_a_daemon_reads_and_writes_its_queue_siblings_and_held_messages() -> None:
    user = daemon_user("edge-1", passwords=[PASSWORD])
    for key in [
        *(daemon_queue("edge-1") + s for s in ("", f"{SEP}3", f"{SEP}6", f"{SEP}9")),
        *unacked_keys(daemon="edge-1").values(),
    ]:
        assert allowed(user, key, permission="read") and allowed(user, key, permission="write"), key


def test_a_daemon_may_only_write_the_cp_queue_its_heartbeat_and_its_dead_letters() -> None:
    user = daemon_user("edge-1", passwords=[PASSWORD])
    for key in ("mycelial.cp", heartbeat_key("edge-1"), dead_letter_key(daemon_queue("edge-1"))):
        assert allowed(user, key, permission="write"), key
        assert not allowed(user, key, permission="read"), key


def test_no_rule_of_a_daemon_reaches_any_key_of_another_daemon() -> None:
    names = [
        "edge-1",
        "edge-10",
        "edge-1x",
        "edge-1.celery",
        "edge-1-3",
        "edge-1ab3",
        "edge-1.x9",
        "edge",
        "e",
    ]
    names += ["edge-1_", "EDGE-1", "edge-1.celery.pidbox"]
    users = {name: daemon_user(name, passwords=[PASSWORD]) for name in names}
    for name, user in users.items():
        for other in names:
            if other == name:
                continue
            for key in keys_of(other):
                reach = allowed(user, key, permission="read") or allowed(user, key, permission="write")
                assert not reach, f"{name} reaches {other}'s {key!r}"


NAMES = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
SUFFIXES = st.from_regex(r"\A[A-Za-z0-9_.-]{1,8}\Z")


@given(NAMES, st.one_of(NAMES, st.tuples(NAMES, SUFFIXES)), st.booleans())
def test_any_two_daemon_names_keep_their_keys_apart(
    name: str, other_or_parts: str | tuple[str, str], prefix_first: bool
) -> None:
    # the other name is random, or this name with something appended (the dangerous case),
    # or the other way round
    if isinstance(other_or_parts, tuple):
        base, suffix = other_or_parts
        name, other = (base, base + suffix) if prefix_first else (base + suffix, base)
    else:
        other = other_or_parts
    if name == other:
        return
    user = daemon_user(name, passwords=[PASSWORD])
    for key in keys_of(other):
        assert not allowed(user, key, permission="read"), (name, key)
        assert not allowed(user, key, permission="write"), (name, key)
    for key in keys_of(name):
        assert allowed(user, key, permission="write"), (name, key)


def test_a_daemon_cannot_bind_to_the_control_planes_exchange_nor_read_its_queues() -> None:
    user = daemon_user("edge-1", passwords=[PASSWORD])
    for key in (
        "_kombu.binding.mycelial.cp",
        "_kombu.binding_permanent.mycelial.cp",
        "_kombu.binding.mycelial.cp.control",
        "_kombu.binding.celeryev",
        "_kombu.binding_deadlines",
        "mycelial.cp.control",
        "mycelial.cp.heartbeat-reader",
        "unacked.cp",
        f"mycelial.cp{SEP}3",
    ):
        assert not allowed(user, key, permission="write"), key
        assert not allowed(user, key, permission="read"), key
    assert not allowed(user, "mycelial.cp", permission="read")


def test_remote_control_is_subscribe_only_and_events_publish_only_on_the_brokers_database() -> None:
    user = daemon_user("edge-1", passwords=[PASSWORD], db=7)
    root_channels = [r for r in user.rules if r.startswith("&")]
    assert root_channels == ["&/7.celery.pidbox"]  # PSUBSCRIBE matches its pattern literally
    assert "+publish" not in user.rules and "+spublish" not in user.rules
    assert "+psubscribe" in user.rules and "+subscribe" not in user.rules
    selectors = [r for r in user.rules if r.startswith("(")]
    assert selectors == ["(+publish &/7.celeryev/*)"]
    assert "+select|7" in user.rules and "+select" not in user.rules


def test_a_daemon_gets_named_commands_only_and_nothing_that_reads_a_whole_list() -> None:
    user = daemon_user("edge-1", passwords=[PASSWORD])
    commands = [r for r in user.rules if r[0] in "+-"]
    assert commands[0] == "-@all"
    assert not any(r.startswith("+@") for r in commands)
    for forbidden in ("+lrange", "+keys", "+scan", "+eval", "+config", "+acl", "+flushdb", "+publish"):
        assert forbidden not in commands


def test_passwords_appear_only_as_sha256_hashes_and_an_old_one_may_stay_during_rotation() -> None:
    old = "an-older-password-still-in-use"
    user = daemon_user("edge-1", passwords=[PASSWORD, old])
    text = user.setuser_line() + user.acl_file_line() + str(user.as_json())
    assert PASSWORD not in text and old not in text
    assert f"#{hashlib.sha256(PASSWORD.encode()).hexdigest()}" in user.rules
    assert f"#{password_hash(old)}" in user.rules
    assert user.rules[:2] == ("reset", "on")  # applying the rules replaces whatever the user had


def test_the_control_plane_user_has_every_key_and_channel_but_no_dangerous_command() -> None:
    user = control_plane_user(passwords=[PASSWORD])
    assert user.name == "mycelial-cp"
    assert user.rules[3:] == ("~*", "&*", "+@all", "-@dangerous")


def test_the_same_rules_print_as_a_redis_cli_command_and_as_an_acl_file_line() -> None:
    user = daemon_user("edge-1", passwords=[PASSWORD], user="site-a-edge-1")
    rules = " ".join(user.rules)
    assert user.setuser_line() == f"ACL SETUSER site-a-edge-1 {rules}"
    assert user.acl_file_line() == f"user site-a-edge-1 {rules}"
    assert user.setuser_args()[:3] == ["ACL", "SETUSER", "site-a-edge-1"]
    assert all(r.isascii() and r.isprintable() for r in user.rules)  # no quoting needed anywhere


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: daemon_user("a b", passwords=[PASSWORD]), "invalid daemon name 'a b'"),
        (lambda: daemon_user("a*", passwords=[PASSWORD]), "invalid daemon name 'a*'"),
        (lambda: daemon_user("edge-1", passwords=[PASSWORD], db=-1), "invalid database number -1"),
        (lambda: daemon_user("edge-1", passwords=[]), "user mycelial-daemon-edge-1: no password"),
        (lambda: daemon_user("edge-1", passwords=["short"]), "the password is too short (5 characters"),
        (lambda: daemon_user("edge-1", passwords=[PASSWORD + " x"]), "printable characters without"),
        (lambda: daemon_user("edge-1", passwords=[PASSWORD], user="x y"), "invalid broker user name"),
        (lambda: control_plane_user(passwords=[PASSWORD], user="a>b"), "invalid broker user name 'a>b'"),
    ],
)
def test_bad_names_databases_and_passwords_are_refused_with_what_is_wrong(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BrokerAclError) as raised:
        make()
    assert message in str(raised.value)
