"""Messages that differ only in numbers, ids, quoted strings, paths or hosts share one shape."""

from __future__ import annotations

import pytest

from cp.logs.fingerprint import fingerprint, shape

SAME_SHAPE = [
    pytest.param(
        "run orders@2026-12-01T10:00:00Z failed after 3 attempts",
        "run orders@2026-12-02T11:30:00Z failed after 12 attempts",
        id="times-and-counts",
    ),
    pytest.param(
        "connection to 10.0.0.5:5432 refused", "connection to 192.168.1.20:6543 refused", id="ipv4-and-port"
    ),
    pytest.param("connect to db1.example.com timed out", "connect to pg.internal.net timed out", id="hosts"),
    pytest.param("cannot open /var/lib/a/shop.db", "cannot open /srv/data/other.db", id="paths"),
    pytest.param("table 'orders' has no column \"id\"", "table 'items' has no column \"sku\"", id="quoted"),
    pytest.param(
        "task 1f2e3d4c-aaaa-bbbb-cccc-0123456789ab lost",
        "task 00000000-1111-2222-3333-444444444444 lost",
        id="uuids",
    ),
    pytest.param("checksum deadbeef1234 differs", "checksum 0badc0ffee99 differs", id="hex"),
    pytest.param("dsn postgresql://u@h1/db failed", "dsn mysql://root@h2:3306/x failed", id="urls"),
    pytest.param("took 1.5 s", "took 20 s", id="decimals"),
    pytest.param("boom\nTraceback: line 1", "boom\nTraceback: line 99", id="first-line-only"),
    pytest.param("too   many\tspaces", "too many spaces", id="spaces"),
]


@pytest.mark.parametrize(("one", "other"), SAME_SHAPE)
def test_occurrences_of_one_problem_share_a_fingerprint(one: str, other: str) -> None:
    assert shape(one) == shape(other)
    assert fingerprint("x", one) == fingerprint("x", other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param("connection refused", "permission denied", id="words"),
        pytest.param("cannot open /a/b", "cannot write /a/b", id="verb"),
    ],
)
def test_different_problems_have_different_fingerprints(one: str, other: str) -> None:
    assert fingerprint("x", one) != fingerprint("x", other)


def test_the_logger_is_part_of_the_fingerprint() -> None:
    assert fingerprint("a", "failed") != fingerprint("b", "failed")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param("retry 3 of 5", "retry <n> of <n>", id="numbers"),
        pytest.param("open '/x/y' failed", "open <str> failed", id="quoted-path"),
        pytest.param("host 10.1.2.3 down", "host <ip> down", id="ip"),
        pytest.param("plain words only", "plain words only", id="words"),
        pytest.param("orders2 lost", "orders2 lost", id="digits-inside-a-word-stay"),
    ],
)
def test_shapes_read_as_the_message_with_placeholders(message: str, expected: str) -> None:
    assert shape(message) == expected


def test_a_huge_message_is_shaped_from_its_start() -> None:
    assert len(shape("x" * 1_000_000)) <= 300
