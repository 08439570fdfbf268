"""Throwaway TLS servers of the tests' own (Redis, PostgreSQL, MariaDB), each in a temporary
directory on a free port, with certificates from ``tests/tls_certs.py``. The machine's shared
servers are never reconfigured. A server whose binaries are missing skips its tests (fails them
under CI=true)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.tls_certs import CertificateAuthority, Issued

START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_binary(name: str, *candidates: str) -> str:
    for candidate in (name, *candidates):
        found = shutil.which(candidate)
        if found:
            return found
    message = f"{name} is not installed: cannot start a TLS server of our own"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Pki:
    """The tests' certificate authorities: ``ca`` signs the servers' and the client's certificates,
    ``other`` is an unrelated CA that signs nothing the servers use."""

    ca: CertificateAuthority
    other: CertificateAuthority
    server: Issued  # for 127.0.0.1 and localhost
    client: Issued  # a client certificate from ``ca``
    stranger: Issued  # a client certificate from ``other``


def make_pki(directory: Path) -> Pki:
    ca = CertificateAuthority(directory, "mycelial-test")
    other = CertificateAuthority(directory, "unrelated")
    return Pki(
        ca=ca,
        other=other,
        server=ca.issue("server", hosts=("127.0.0.1", "localhost")),
        client=ca.issue("client", client=True),
        stranger=other.issue("stranger", client=True),
    )


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"server on port {port} did not start:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Redis ---------------------------------------------------------------------------------


@contextmanager
def tls_redis(directory: Path, pki: Pki, *, auth_clients: str = "optional") -> Iterator[int]:
    """``redis-server --port 0 --tls-port P`` with ``pki.server``; yields P. ``auth_clients``:
    ``yes`` (a client certificate from the CA required), ``optional`` or ``no``. Listens on
    127.0.0.1 and 127.0.0.2 (an address the certificate does not name)."""
    binary = require_binary("redis-server")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "redis.log"
    argv = [
        binary,
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1", "127.0.0.2",
        "--tls-cert-file", str(pki.server.cert),
        "--tls-key-file", str(pki.server.key),
        "--tls-ca-cert-file", str(pki.ca.cert),
        "--tls-auth-clients", auth_clients,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, log)
        yield port
    finally:
        _stop(proc)


# --- PostgreSQL ----------------------------------------------------------------------------


def _as_service_user(user: str) -> list[str]:
    """initdb and mariadbd refuse to run as root: run them as the service's own user then."""
    if os.geteuid() != 0:
        return []
    return [require_binary("runuser"), "-u", user, "--"]


def _chown_tree(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        for item in [path, *path.rglob("*")]:
            shutil.chown(item, user=user)


@contextmanager
def _service_directory(prefix: str) -> Iterator[Path]:
    """A directory of its own in /tmp: pytest's are 0700 under root's, which a service user
    cannot enter."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def tls_postgres(pki: Pki) -> Iterator[int]:
    """A PostgreSQL cluster that takes only TLS connections (``hostssl``), and only with a client
    certificate from the CA; trusts any user that presents one. Listens on 127.0.0.1 and
    127.0.0.2 (an address the certificate does not name). Yields its port."""
    initdb = require_binary("initdb")
    postgres = require_binary("postgres")
    with _service_directory("mycelial-pg-") as directory:
        yield from _run_postgres(directory, pki, initdb=initdb, postgres=postgres)


def _run_postgres(directory: Path, pki: Pki, *, initdb: str, postgres: str) -> Iterator[int]:
    data = directory / "data"
    for name, source in (
        ("server.crt", pki.server.cert),
        ("server.key", pki.server.key),
        ("ca.crt", pki.ca.cert),
    ):
        shutil.copy(source, directory / name)
        os.chmod(directory / name, 0o600)
    _chown_tree(directory, "postgres")
    runner = _as_service_user("postgres")
    log = directory / "postgres.log"
    subprocess.run(
        [*runner, initdb, "-D", str(data), "-U", "postgres", "-A", "reject", "--no-sync"],
        check=True,
        capture_output=True,
    )
    (data / "pg_hba.conf").write_text(
        "hostssl all all 127.0.0.0/8 trust clientcert=verify-ca\nlocal   all all               trust\n",
        encoding="utf-8",
    )
    port = free_port()
    argv = [
        *runner,
        postgres,
        "-D", str(data),
        "-p", str(port),
        "-c", "listen_addresses=127.0.0.1,127.0.0.2",
        "-c", f"unix_socket_directories={directory}",
        "-c", "ssl=on",
        "-c", f"ssl_cert_file={directory / 'server.crt'}",
        "-c", f"ssl_key_file={directory / 'server.key'}",
        "-c", f"ssl_ca_file={directory / 'ca.crt'}",
        "-c", "fsync=off",
    ]  # fmt: skip
    _chown_tree(directory, "postgres")
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, log)
        _wait_ready(lambda: _postgres_ready(directory, port), proc, log)
        yield port
    finally:
        _stop(proc)


def _postgres_ready(directory: Path, port: int) -> bool:
    import psycopg

    try:
        psycopg.connect(host=str(directory), port=port, user="postgres", dbname="postgres").close()
        return True
    except psycopg.OperationalError:
        return False


def _wait_ready(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        if ready():
            return
        time.sleep(0.1)
    raise AssertionError(f"server did not become ready:\n{log.read_text(errors='replace')}")


# --- MariaDB -------------------------------------------------------------------------------


@contextmanager
def tls_mariadb(pki: Pki) -> Iterator[int]:
    """A MariaDB server with ``require_secure_transport``, on 127.0.0.1 and 127.0.0.2; the user
    ``mycelial`` (no password, from any host) may do anything. Yields its port."""
    install = require_binary("mariadb-install-db", "mysql_install_db")
    server = require_binary("mariadbd", "mysqld")
    with _service_directory("mycelial-mariadb-") as directory:
        yield from _run_mariadb(directory, pki, install=install, server=server)


def _run_mariadb(directory: Path, pki: Pki, *, install: str, server: str) -> Iterator[int]:
    for name, source in (
        ("server.crt", pki.server.cert),
        ("server.key", pki.server.key),
        ("ca.crt", pki.ca.cert),
    ):
        shutil.copy(source, directory / name)
    _chown_tree(directory, "mysql")
    user = ["--user=mysql"] if os.geteuid() == 0 else []
    log = directory / "mariadb.log"
    subprocess.run(
        [install, "--no-defaults", *user, f"--datadir={directory / 'data'}",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    argv = [
        server,
        "--no-defaults",
        *user,
        f"--datadir={directory / 'data'}",
        f"--port={port}",
        "--bind-address=127.0.0.1,127.0.0.2",
        f"--socket={directory / 'mariadb.sock'}",
        f"--pid-file={directory / 'mariadb.pid'}",
        f"--ssl-ca={directory / 'ca.crt'}",
        f"--ssl-cert={directory / 'server.crt'}",
        f"--ssl-key={directory / 'server.key'}",
        "--require-secure-transport=ON",
        "--skip-log-bin",
        "--innodb-buffer-pool-size=16M",
        f"--log-error={log}",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, log)
        subprocess.run(
            [require_binary("mariadb", "mysql"), f"--socket={directory / 'mariadb.sock'}", "-uroot", "-e",
             "CREATE USER mycelial@'%'; GRANT ALL ON *.* TO mycelial@'%'"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        yield port
    finally:
        _stop(proc)
