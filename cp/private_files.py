"""Folders and files only their owner can open: the home and everything the processes keep in it.

Folders are 0700 and files 0600. Files made here get that mode explicitly; files a library makes
(SQLite's journals, redis-server's files) get it from the process umask, which every ``mycelial``
process sets to 077 when it starts; what an older release left looser is tightened when opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafeHomeError(ValueError):
    """The home folder cannot be kept private: another user owns it, or it is not a folder."""


def restrict_umask() -> int:
    """Make everything this process creates from now on private; returns the previous umask."""
    return os.umask(PRIVATE_UMASK)


def make_dirs(path: Path) -> Path:
    """Create ``path`` and its missing parents 0700; folders that exist are left as they are."""
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            folder.mkdir(mode=DIR_MODE)
        tighten(folder)  # mkdir's mode passes through the umask
    return path


def private_dir(path: Path) -> Path:
    """``path`` as a 0700 folder: created with its missing parents, or tightened if looser."""
    make_dirs(path)
    tighten(path)
    return path


def tighten(path: Path) -> bool:
    """Take group and other permissions off a folder or regular file; True when it changed.

    Symbolic links, sockets and other special files are left alone (a link's mode is its
    target's, which may lie outside the home).
    """
    st = os.lstat(path)
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return False
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return False
    os.chmod(path, mode & 0o700)
    return True


def tighten_tree(root: Path) -> int:
    """Tighten ``root`` and everything under it, without following links; returns how many
    entries changed. An entry that vanishes meanwhile is skipped; one this user may not change
    (another user's file, put there by root) is logged and skipped."""
    changed = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (".", *dirs, *files):
            path = Path(folder) if name == "." else Path(folder) / name
            try:
                changed += tighten(path)
            except FileNotFoundError:
                continue
            except PermissionError as exc:
                log.warning("cannot make %s private: %s", path, exc.strerror)
    return changed


def open_private(path: Path, flags: int) -> int:
    """``os.open`` that creates the file 0600, and makes an existing one 0600 if it was looser."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def prepare_home(home: Path, *, deep: bool = False) -> Path:
    """Create the home 0700, or check an existing one: refused when another user owns it (that
    user could read or replace every key and credential in it), tightened when group or others
    may enter it. ``deep`` also tightens everything inside (long-running processes, at start)."""
    make_dirs(home)
    try:
        st = os.stat(home)
    except OSError as exc:
        raise UnsafeHomeError(f"MYCELIAL_HOME {home}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeHomeError(f"MYCELIAL_HOME {home} is not a folder")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeHomeError(
            f"MYCELIAL_HOME {home} belongs to uid {st.st_uid}, not to this user (uid {uid}): "
            "refusing to keep keys and credentials in a folder another user controls"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        os.chmod(home, mode & 0o700)
        log.warning("MYCELIAL_HOME %s was mode %04o; made it %04o", home, mode, mode & 0o700)
    if deep:
        changed = tighten_tree(home)
        if changed:
            log.warning("made %d folder(s) and file(s) under %s private (0700/0600)", changed, home)
    return home
