"""Specification of private state: the home and what is kept in it are their owner's only, and a
home another user controls is refused. The test process keeps its usual umask (022), so every
mode checked here comes from the code under test, not from a umask that hides a missing chmod."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from cp.db import make_engine
from cp.private_files import UnsafeHomeError, make_dirs, open_private, prepare_home, private_dir, tighten
from workers.deliveries import DeliveryLog
from workers.outbox import Envelope, Outbox


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def ordinary_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- the home ---------------------------------------------------------------------------


def test_a_new_home_and_its_missing_parents_are_created_0700(tmp_path: Path) -> None:
    home = tmp_path / "a" / "b" / "home"

    prepare_home(home)

    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", home)] == [0o700] * 3


def test_an_existing_home_others_could_enter_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)

    prepare_home(home)

    assert mode(home) == 0o700


def test_a_deep_preparation_tightens_every_folder_and_file_an_older_release_left_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "daemons" / "edge-1" / "deliveries").mkdir(parents=True)
    files = [
        home / "mycelial.db",
        home / "logs.log",
        home / "daemons" / "edge-1" / "applied-config.json",
        home / "daemons" / "edge-1" / "deliveries" / "abc",
    ]
    for path in files:
        path.write_text("x")
        path.chmod(0o644)
    (home / "tool.sh").write_text("#!/bin/sh\n")
    (home / "tool.sh").chmod(0o755)
    for folder in (home, home / "daemons", home / "daemons" / "edge-1"):
        folder.chmod(0o755)

    prepare_home(home, deep=True)

    for folder, _dirs, names in os.walk(home):
        assert mode(Path(folder)) == 0o700, folder
        for name in names:
            expected = 0o700 if name == "tool.sh" else 0o600  # the owner keeps what it had
            assert mode(Path(folder) / name) == expected, name


def test_a_deep_preparation_does_not_follow_links_out_of_the_home(tmp_path: Path) -> None:
    outside = tmp_path / "shared.csv"
    outside.write_text("a,b\n")
    outside.chmod(0o644)
    shared_dir = tmp_path / "exports"
    shared_dir.mkdir(mode=0o755)
    shared_dir.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    (home / "link.csv").symlink_to(outside)
    (home / "exports").symlink_to(shared_dir)

    prepare_home(home, deep=True)

    assert mode(outside) == 0o644 and mode(shared_dir) == 0o755


def test_a_socket_in_the_home_is_left_as_its_server_made_it(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(home / "s.sock"))
        before = mode(home / "s.sock")
        prepare_home(home, deep=True)
        assert mode(home / "s.sock") == before


def another_users_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        folder = tmp_path / "theirs"
        folder.mkdir(mode=0o700)
        os.chown(folder, 65534, 65534)
        return folder
    root_owned = Path("/")
    assert root_owned.stat().st_uid != os.geteuid()
    return root_owned


def test_a_home_another_user_owns_is_refused_with_one_line(tmp_path: Path) -> None:
    theirs = another_users_folder(tmp_path)
    before = mode(theirs)

    with pytest.raises(UnsafeHomeError) as refused:
        prepare_home(theirs, deep=True)

    message = str(refused.value)
    assert "\n" not in message and str(theirs) in message and "belongs to uid" in message
    assert mode(theirs) == before  # nothing was changed in it


def test_a_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("")

    with pytest.raises(UnsafeHomeError, match="is not a folder"):
        prepare_home(tmp_path / "home")


# --- files and folders ------------------------------------------------------------------


def test_open_private_creates_0600_and_tightens_an_existing_file(tmp_path: Path) -> None:
    os.close(open_private(tmp_path / "new", os.O_WRONLY))
    (tmp_path / "old").write_text("x")
    (tmp_path / "old").chmod(0o666)
    os.close(open_private(tmp_path / "old", os.O_WRONLY | os.O_APPEND))

    assert mode(tmp_path / "new") == 0o600 and mode(tmp_path / "old") == 0o600


def test_make_dirs_leaves_existing_folders_as_the_operator_made_them(tmp_path: Path) -> None:
    shared = tmp_path / "srv"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)

    make_dirs(shared / "mycelial")

    assert mode(shared) == 0o755 and mode(shared / "mycelial") == 0o700


def test_private_dir_tightens_the_folder_itself(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)

    private_dir(folder)

    assert mode(folder) == 0o700


def test_tighten_leaves_a_private_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("")
    path.chmod(0o400)

    assert tighten(path) is False and mode(path) == 0o400


# --- state files the processes write -----------------------------------------------------


def test_the_sqlite_database_and_its_wal_and_shared_memory_files_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "new" / "mycelial.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
        wal, shm = path.with_name("mycelial.db-wal"), path.with_name("mycelial.db-shm")
        assert wal.exists() and shm.exists()
        assert [mode(p) for p in (path, wal, shm)] == [0o600] * 3
    engine.dispose()
    assert mode(path.parent) == 0o700


def test_a_sqlite_database_an_older_release_left_readable_is_tightened_with_its_companions(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mycelial.db"
    for name in ("mycelial.db", "mycelial.db-wal", "mycelial.db-shm"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).chmod(0o644)

    make_engine(f"sqlite:///{path}").dispose()

    assert [mode(tmp_path / n) for n in ("mycelial.db", "mycelial.db-wal", "mycelial.db-shm")] == [0o600] * 3


def test_delivery_counts_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "daemons" / "edge-1" / "deliveries")

    assert log.record("task-1") == 1 and log.record("task-1") == 2

    folder = tmp_path / "daemons" / "edge-1" / "deliveries"
    assert mode(folder) == 0o700 and mode(tmp_path / "daemons") == 0o700
    assert [mode(p) for p in folder.iterdir()] == [0o600]


def test_a_spool_an_older_release_left_readable_is_tightened_when_appended_to(tmp_path: Path) -> None:
    spool = tmp_path / "daemon" / "outbox.jsonl"
    spool.parent.mkdir(mode=0o755)
    spool.write_text("")
    spool.chmod(0o644)

    def refuse(message: Envelope) -> None:
        raise ConnectionError("broker away")

    box = Outbox(refuse, max_pending=10, spool=spool, retry_max=0.05, name="test")
    box.put(Envelope(task="cp.heartbeat", payload={"n": 1}, argsrepr="n=1"))
    box.close(timeout=0)

    assert spool.read_text().count("\n") == 1
    assert mode(spool) == 0o600 and mode(spool.parent) == 0o700
