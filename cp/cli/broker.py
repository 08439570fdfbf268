"""``mycelial broker acl ...``: the Redis ACL users of the control plane and of each daemon."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cp.broker_acl import BrokerAclError, BrokerUser, check_password, control_plane_user, daemon_user
from cp.cli.output import EXIT_BAD_INPUT, CliError, note, print_json, print_lines

PASSWORD_FILE_MAX_BYTES = 4096

broker_app = typer.Typer(help="The broker (Redis).", no_args_is_help=True)
acl_app = typer.Typer(
    help="Redis 7 ACL users: print the rules, to pipe into redis-cli or keep in an ACL file.",
    no_args_is_help=True,
)
broker_app.add_typer(acl_app, name="acl")

PasswordFile = Annotated[
    Path,
    typer.Option(
        "--password-file",
        help="The user's password, one line; created (0600, random) when missing. Rules carry its hash only.",
    ),
]
OldPasswordFile = Annotated[
    Path | None,
    typer.Option(
        "--old-password-file",
        help="During a rotation: a password still accepted beside the new one until the next apply.",
    ),
]
UserOption = Annotated[str | None, typer.Option("--user", help="The Redis user name.")]
AclFileOption = Annotated[bool, typer.Option("--acl-file", help="Print a line for a Redis ACL file instead.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@acl_app.command("daemon")
def acl_daemon(
    name: Annotated[str, typer.Argument(help="The daemon's name.")],
    password_file: PasswordFile,
    db: Annotated[
        int, typer.Option("--db", min=0, help="The Redis database of the broker URL (/N); default 0.")
    ] = 0,
    old_password_file: OldPasswordFile = None,
    user: UserOption = None,
    acl_file: AclFileOption = False,
    json_: JsonOption = False,
) -> None:
    """A daemon's user: its own queue and keys, push-only to mycelial.cp, nothing of other daemons."""
    passwords = _passwords(password_file, old_password_file)
    _print(_made(lambda: daemon_user(name, passwords=passwords, db=db, user=user)), acl_file, json_)


@acl_app.command("control-plane")
def acl_control_plane(
    password_file: PasswordFile,
    old_password_file: OldPasswordFile = None,
    user: UserOption = None,
    acl_file: AclFileOption = False,
    json_: JsonOption = False,
) -> None:
    """The control plane's user (workers, beat, CLI, Flower): all keys, no @dangerous commands."""
    passwords = _passwords(password_file, old_password_file)
    _print(_made(lambda: control_plane_user(passwords=passwords, user=user)), acl_file, json_)


def _made(make: Callable[[], BrokerUser]) -> BrokerUser:
    try:
        return make()
    except BrokerAclError as exc:
        raise CliError(str(exc), code=EXIT_BAD_INPUT) from None


def _print(user: BrokerUser, acl_file: bool, json_: bool) -> None:
    if acl_file and json_:
        raise CliError("--acl-file and --json: choose one", code=EXIT_BAD_INPUT)
    if json_:
        print_json(user.as_json())
    else:
        print_lines([user.acl_file_line() if acl_file else user.setuser_line()])


def _passwords(path: Path, old: Path | None) -> list[str]:
    passwords = [read_password_file(path, create=True)]
    if old is not None:
        passwords.append(read_password_file(old, create=False))
    return passwords


def read_password_file(path: Path, *, create: bool) -> str:
    """The password in ``path`` (one line); a new random one written there (0600) when ``create``
    and the file does not exist."""
    if create and not path.exists():
        return _create_password_file(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(PASSWORD_FILE_MAX_BYTES + 1)
        mode = path.stat().st_mode
    except OSError as exc:
        raise CliError(f"password file {path}: {exc.strerror or exc}", code=EXIT_BAD_INPUT) from None
    if len(raw) > PASSWORD_FILE_MAX_BYTES:
        raise CliError(
            f"password file {path}: larger than {PASSWORD_FILE_MAX_BYTES} bytes", code=EXIT_BAD_INPUT
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"password file {path}: not UTF-8 text", code=EXIT_BAD_INPUT) from None
    password = text.removesuffix("\n").removesuffix("\r")
    if "\n" in password or "\r" in password:
        raise CliError(f"password file {path}: more than one line", code=EXIT_BAD_INPUT)
    try:
        check_password(password, where=f"password file {path}")
    except BrokerAclError as exc:
        raise CliError(str(exc), code=EXIT_BAD_INPUT) from None
    if mode & 0o077:
        note(f"warning: password file {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    return password


def _create_password_file(path: Path) -> str:
    password = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise CliError(f"password file {path}: {exc.strerror or exc}", code=EXIT_BAD_INPUT) from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(password + "\n")
    note(f"wrote a new random password to {path} (mode 600)")
    return password
