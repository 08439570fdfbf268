"""Specification of Flower's credentials and of the check in front of every Flower URL."""

from __future__ import annotations

import base64
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cp.cli.flower_server import CREDENTIALS_FILE, authorized, flower_command, flower_credentials


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def ordinary_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- Flower's credentials ----------------------------------------------------------------


def test_flower_credentials_are_created_once_0600_and_read_back_afterwards(tmp_path: Path) -> None:
    first = flower_credentials(tmp_path / "home")
    second = flower_credentials(tmp_path / "home")

    assert first.created and not second.created
    assert (second.user, second.password) == (first.user, first.password)
    assert len(first.password) >= 24
    assert mode(tmp_path / "home" / CREDENTIALS_FILE) == 0o600 and mode(tmp_path / "home") == 0o700
    left = sorted(p.name for p in (tmp_path / "home").iterdir())
    assert left == [f".{CREDENTIALS_FILE}.lock", CREDENTIALS_FILE]  # no temporary file left
    assert mode(tmp_path / "home" / f".{CREDENTIALS_FILE}.lock") == 0o600


def test_a_credentials_file_left_readable_is_tightened_and_kept(tmp_path: Path) -> None:
    path = tmp_path / CREDENTIALS_FILE
    path.write_text("admin:kept-password\n")
    path.chmod(0o644)

    found = flower_credentials(tmp_path)

    assert (found.password, found.created) == ("kept-password", False) and mode(path) == 0o600


def test_a_malformed_credentials_file_is_replaced_by_new_credentials(tmp_path: Path) -> None:
    (tmp_path / CREDENTIALS_FILE).write_text("no colon here\n")

    found = flower_credentials(tmp_path)

    assert found.created and (tmp_path / CREDENTIALS_FILE).read_text() == f"admin:{found.password}\n"


def test_processes_creating_the_credentials_at_once_agree_on_one_password(tmp_path: Path) -> None:
    results = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        results.append(flower_credentials(tmp_path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({r.password for r in results}) == 1
    assert sum(r.created for r in results) == 1  # the password is shown by exactly one of them


def basic(value: bytes) -> str:
    return "Basic " + base64.b64encode(value).decode()


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (basic(b"admin:pw-1234"), True),
        ("basic " + base64.b64encode(b"admin:pw-1234").decode(), True),  # the scheme is case-blind
        (basic(b"admin:pw-123"), False),  # a prefix of the password
        (basic(b"admin:pw-12345"), False),
        (basic(b"root:pw-1234"), False),
        (basic(b"admin:"), False),
        (basic(b""), False),
        ("Bearer " + base64.b64encode(b"admin:pw-1234").decode(), False),
        ("Basic not*base64", False),
        ("Basic", False),
        ("", False),
        (None, False),
        (basic(b"admin:pw-1234") + "," + basic(b"x:y"), False),  # two headers, joined by Tornado
    ],
)
def test_only_the_exact_credentials_are_authorized(header: str | None, accepted: bool) -> None:
    assert authorized(header, b"admin:pw-1234") is accepted


def test_a_flower_that_builds_its_application_elsewhere_is_not_started_unguarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flower.command

    assert flower_command() is flower.command
    monkeypatch.setattr(flower.command, "Flower", lambda **kwargs: None)

    with pytest.raises(RuntimeError, match="refusing to start it without authentication"):
        flower_command()
