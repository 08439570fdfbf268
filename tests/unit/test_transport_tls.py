"""Transport security without servers: settings, the TLS options every client gets, the hook
points in kombu, redis-py and Flower this relies on, and the checks of database TLS options.
(Connections against real TLS servers: tests/test_broker_tls.py, tests/test_database_tls.py.)"""

from __future__ import annotations

import inspect
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from sqlalchemy.exc import OperationalError

from cp.celery_app import make_celery
from cp.cli import failures
from cp.settings import Settings, SettingsError, load_settings
from cp.tls.broker import (
    BrokerTls,
    VerifiedConnectionPool,
    VerifiedPooledConnection,
    VerifiedSSLConnection,
    VerifiedTransport,
    redis_url_client,
    url_tls_problem,
)
from cp.tls.context import TlsConfigError, client_context, tls_failure, tls_refused
from cp.tls.database import MysqlTls, postgres_tls_problem
from tests.tls_servers import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for key in [k for k in __import__("os").environ if k.startswith("MYCELIAL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(f"MYCELIAL_{key.upper()}", value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    return str(raised.value)


# --- settings ------------------------------------------------------------------------------


def test_tls_files_are_refused_for_a_broker_that_is_not_rediss(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = str(pki.ca.cert)
    assert settings_error(monkeypatch, broker_url="redis://h:6379/0", broker_ca_file=ca) == (
        f"invalid settings: MYCELIAL_BROKER_CA_FILE: Value error, {ca} is set for a broker that is not "
        "rediss:// (redis://); TLS files apply to rediss:// URLs only"
    )
    assert "(the embedded Redis)" in settings_error(monkeypatch, broker_cert_file=str(pki.client.cert))


@pytest.mark.parametrize(
    "query", ["ssl_cert_reqs=none", "ssl_check_hostname=false", "SSL_CA_CERTS=/x", "a=1&ssl_keyfile=/k"]
)
def test_tls_parameters_in_the_broker_url_are_refused(query: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # kombu and redis-py would let them replace the verified options (ssl_cert_reqs=none: no check)
    message = settings_error(monkeypatch, broker_url=f"rediss://h:6380/0?{query}")
    assert message.startswith("invalid settings: MYCELIAL_BROKER_URL: Value error, TLS parameters in the")
    assert "MYCELIAL_BROKER_CA_FILE" in message
    assert url_tls_problem(f"rediss://h/0?{query}") is not None
    assert url_tls_problem("rediss://h/0?health=1") is None


def test_a_client_key_needs_its_certificate_and_every_file_must_exist(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_error(
        monkeypatch, broker_url="rediss://h/0", broker_key_file=str(pki.client.key)
    ).endswith("MYCELIAL_BROKER_KEY_FILE: Value error, a client key needs MYCELIAL_BROKER_CERT_FILE too")
    missing = tmp_path / "nope.pem"
    assert settings_error(monkeypatch, broker_url="rediss://h/0", broker_ca_file=str(missing)).endswith(
        f"MYCELIAL_BROKER_CA_FILE: Value error, {missing}: no such file"
    )


def test_a_file_that_holds_no_certificate_is_a_settings_error_naming_it(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    settings = Settings(home=tmp_path, broker_url="rediss://h:6380/0", broker_ca_file=junk)
    with pytest.raises(SettingsError, match=rf"^invalid settings: broker TLS: CA file {junk}: not usable"):
        make_celery(settings)


# --- what Celery and kombu get -------------------------------------------------------------


def test_a_rediss_broker_is_always_verified_never_kombus_cert_none_default(tmp_path: Path, pki: Pki) -> None:
    plain = make_celery(Settings(home=tmp_path, broker_url="rediss://broker.internal:6380/0"))
    assert plain.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    pinned = make_celery(
        Settings(
            home=tmp_path,
            broker_url="rediss://broker.internal:6380/0",
            broker_ca_file=pki.ca.cert,
            broker_cert_file=pki.client.cert,
            broker_key_file=pki.client.key,
        )
    )
    assert pinned.conf.broker_use_ssl == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(pki.ca.cert),
        "ssl_certfile": str(pki.client.cert),
        "ssl_keyfile": str(pki.client.key),
    }
    connection = pinned.connection_for_write()
    assert connection.ssl == pinned.conf.broker_use_ssl  # not replaced by {'ssl_cert_reqs': CERT_NONE}
    assert connection.get_transport_cls().Channel.connection_class_ssl is VerifiedSSLConnection
    # the pool Celery publishes through makes connections that verify the same way
    pool = pinned.pool
    assert isinstance(pool, VerifiedConnectionPool)
    pooled = pool.acquire()
    try:
        assert isinstance(pooled, VerifiedPooledConnection)
        assert pooled.get_transport_cls() is VerifiedTransport
        assert pooled.ssl == pinned.conf.broker_use_ssl
    finally:
        pooled.release()


def test_a_plain_broker_gets_no_tls_options(tmp_path: Path) -> None:
    app = make_celery(Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0"))
    assert app.conf.broker_use_ssl is False  # Celery's default


# --- the verifying context -----------------------------------------------------------------


def _subjects(context: ssl.SSLContext) -> list[str]:
    return [
        x509.load_der_x509_certificate(der).subject.rfc4514_string()
        for der in context.get_ca_certs(binary_form=True)
    ]


def test_a_ca_file_is_trusted_alone_and_without_one_the_system_store_is_used(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.other.cert))  # stands for the system's store
    pinned = client_context(ca_file=pki.ca.cert)
    assert pinned.verify_mode is ssl.CERT_REQUIRED and pinned.check_hostname
    assert _subjects(pinned) == ["CN=mycelial-test"]
    system = client_context(ca_file=None)
    assert system.verify_mode is ssl.CERT_REQUIRED and system.check_hostname
    assert _subjects(system) == ["CN=unrelated"]
    assert not client_context(ca_file=pki.ca.cert, check_hostname=False).check_hostname


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"ca_file": "/no/such/ca.pem"}, "CA file /no/such/ca.pem: no such file or directory"),
        ({"ca_file": None, "key_file": "/k.pem"}, "client key /k.pem given without a client certificate"),
        (
            {"ca_file": None, "cert_file": "/no/c.pem"},
            "client certificate /no/c.pem: no such file or directory",
        ),
    ],
)
def test_unusable_files_are_named_in_one_line(kwargs: dict[str, Any], expected: str) -> None:
    with pytest.raises(TlsConfigError) as raised:
        client_context(**kwargs)
    assert str(raised.value) == expected


def test_a_client_certificate_with_another_key_is_refused(pki: Pki) -> None:
    with pytest.raises(
        TlsConfigError, match=r"^client certificate .*client.pem / key .*stranger.key: not usable"
    ):
        client_context(ca_file=None, cert_file=pki.client.cert, key_file=pki.stranger.key)


# --- the hook points this relies on (an upgrade that moves them fails here) ----------------


def test_redis_py_still_wraps_its_tls_socket_where_verified_ssl_connection_hooks_in() -> None:
    assert "_wrap_socket_with_ssl" in redis.SSLConnection.__dict__
    assert "self._wrap_socket_with_ssl(sock)" in inspect.getsource(redis.SSLConnection._connect)
    from redis.asyncio.connection import SSLConnection as AsyncSSLConnection

    assert 'kwargs["ssl"] = self.ssl_context.get()' in inspect.getsource(
        AsyncSSLConnection._connection_arguments
    )


def test_kombus_pool_and_channel_still_have_the_names_overridden_here() -> None:
    from kombu.connection import Connection, ConnectionPool
    from kombu.transport import redis as kombu_redis

    assert "connection_class_ssl" in kombu_redis.Channel.__dict__
    assert "self.connection_class_ssl" in inspect.getsource(kombu_redis.Channel._connparams)
    assert "PooledConnection(self, **dict(self.connection._info(resolve=False)))" in inspect.getsource(
        ConnectionPool.new
    )
    assert "return ConnectionPool(self, limit, **kwargs)" in inspect.getsource(Connection.Pool)


def test_flowers_broker_client_is_replaced_by_one_that_verifies(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flower.utils import broker as flower_broker

    from cp.tls.flower import VerifiedAsyncSSLConnection, verify_flower_broker_client

    monkeypatch.setattr(flower_broker, "RedisSsl", flower_broker.RedisSsl)
    assert "RedisSsl(broker_url" in inspect.getsource(flower_broker.Broker.__new__)  # looked up by name
    verify_flower_broker_client()
    verify_flower_broker_client()  # idempotent
    options = BrokerTls(ca_file=pki.ca.cert).redis_options()
    broker = flower_broker.Broker("rediss://127.0.0.1:1/3", broker_use_ssl=options, broker_options={})
    pool = broker.redis.connection_pool
    assert pool.connection_class is VerifiedAsyncSSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(pki.ca.cert)
    assert pool.connection_kwargs["db"] == 3


def test_redis_url_client_verifies_rediss_and_refuses_tls_parameters(pki: Pki) -> None:
    client = redis_url_client("rediss://127.0.0.1:6380/2", tls=BrokerTls(ca_file=pki.ca.cert))
    pool = client.connection_pool
    assert pool.connection_class is VerifiedSSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(pki.ca.cert)
    assert pool.connection_kwargs["ssl_cert_reqs"] is ssl.CERT_REQUIRED
    assert redis_url_client("rediss://h/0").connection_pool.connection_class is VerifiedSSLConnection
    with pytest.raises(ValueError, match="TLS parameters in the broker URL are not accepted"):
        redis_url_client("rediss://h/0?ssl_cert_reqs=none")


# --- one-line reasons ----------------------------------------------------------------------


def _raised_from(cause: BaseException, outer: type[Exception], text: str) -> Exception:
    try:
        try:
            raise cause
        except BaseException:
            raise outer(text)  # noqa: B904  (chained implicitly, as redis-py and PyMySQL do)
    except Exception as exc:
        return exc


def test_a_refused_certificate_is_found_under_the_errors_drivers_wrap_it_in() -> None:
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    verify.verify_message = "self-signed certificate in certificate chain"
    wrapped = _raised_from(verify, ConnectionError, "Error 1 connecting to h:6380. [SSL: ...]")
    assert (
        tls_failure(wrapped)
        == "the server's TLS certificate was refused: self-signed certificate in certificate chain"
    )
    assert tls_refused(wrapped)
    assert tls_failure(ConnectionError("Connection refused")) is None
    assert not tls_refused(ConnectionError("SSL SYSCALL error: EOF detected"))  # a glitch: retried
    assert tls_refused(RuntimeError("server does not support SSL, but SSL was required"))


def test_the_cli_names_the_broker_or_the_database_in_one_line() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    broker = failures.describe(_raised_from(verify, ConnectionError, "Error 1 connecting"))
    assert broker.startswith("broker: the server's TLS certificate was refused: unable to get local issuer")
    assert "MYCELIAL_BROKER_CA_FILE" in broker
    orig = Exception(
        'connection failed: connection to server at "h" failed:\nSSL error: certificate verify failed'
    )
    database = failures.describe(OperationalError("SELECT 1", {}, orig))
    assert database.startswith("database: the server's TLS certificate was refused: connection failed:")
    assert "\n" not in database and database.endswith("MYCELIAL_DATABASE_URL)")
    handshake = failures.describe(
        _raised_from(ssl.SSLEOFError(8, "EOF occurred"), ConnectionError, "Error 8")
    )
    assert handshake.startswith("broker: TLS handshake failed: ") and "MYCELIAL_BROKER_CERT_FILE" in handshake
    other = failures.describe(OperationalError("SELECT 1", {}, Exception("no route\nto host")))
    assert (
        other == "OperationalError: (builtins.Exception) no route to host (run with --debug for a traceback)"
    )


# --- database options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("postgresql://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem", None),
        ("host=h sslmode='verify-ca' sslrootcert='/my ca.pem'", None),
        ("postgresql://u@h/db", None),
        ("postgresql://u@h/db?sslmode=require", None),
        ("host=h sslmode=${env:MODE} sslrootcert=/ca.pem", None),  # judged on the daemon
        ("postgresql://u@h/db?sslmode=VERIFY-FULL", "sslmode='VERIFY-FULL' is not one of"),
        ("host=h sslmode=verify_full", "sslmode='verify_full' is not one of"),
        ("host=h sslrootcert=/ca.pem", "sslrootcert is given, but sslmode=prefer does not verify"),
        (
            "postgresql://u@h/db?sslmode=verify-full&sslmode=allow&sslrootcert=x",
            "sslmode=allow does not verify",
        ),
        ("postgresql://u@h/db?sslrootcert=system&sslmode=require", "sslmode=require does not verify"),
    ],
)
def test_postgres_tls_parameters(dsn: str, problem: str | None) -> None:
    found = postgres_tls_problem(dsn)
    assert (found is None) if problem is None else (found is not None and problem in found), found


@pytest.mark.parametrize(
    ("tls", "arguments"),
    [
        (MysqlTls(), {}),
        (MysqlTls(mode="disabled"), {"ssl_disabled": True}),
    ],
)
def test_mysql_modes_that_make_no_context(tls: MysqlTls, arguments: dict[str, Any]) -> None:
    assert tls.problem() is None
    assert tls.pymysql_arguments() == arguments


def test_mysql_verify_modes_give_pymysql_a_verifying_context(pki: Pki) -> None:
    identity = MysqlTls(
        mode="verify_identity", ca=str(pki.ca.cert), cert=str(pki.client.cert), key=str(pki.client.key)
    )
    context = identity.pymysql_arguments()["ssl"]
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert _subjects(context) == ["CN=mycelial-test"]
    ca_only = MysqlTls(mode="verify_ca", ca=str(pki.ca.cert)).pymysql_arguments()["ssl"]
    assert ca_only.verify_mode is ssl.CERT_REQUIRED and not ca_only.check_hostname
