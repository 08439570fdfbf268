"""TLS to the broker: a ``rediss://`` URL is always verified, never left to kombu's default.

kombu connects to a ``rediss://`` URL given no TLS options with ``ssl_cert_reqs=CERT_NONE``
(it logs a warning and encrypts without checking who answers), and redis-py adds a configured CA
to the system's trust store rather than trusting that CA alone. Here every ``rediss://``
connection (Celery's, via ``broker_use_ssl``; the direct Redis clients, which are made from
Celery's connections; Flower's broker page; ``embedded_redis.redis_client``) requires a
certificate that chains to ``MYCELIAL_BROKER_CA_FILE`` (only to it) or, without that setting, to
the system's trust store, for the host name in the URL. ``ssl_*`` parameters in the URL are
refused, since kombu and redis-py would let them replace these options.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis
from kombu.connection import ConnectionPool, PooledConnection
from kombu.transport import redis as kombu_redis

from cp.tls.context import client_context

TLS_SCHEME = "rediss"


def is_tls_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() == TLS_SCHEME


def url_tls_problem(url: str) -> str | None:
    """Why a broker URL's own TLS parameters are refused, or None."""
    query = urlsplit(url).query if "?" in url else ""
    named = sorted(
        {key for key, _ in parse_qsl(query, keep_blank_values=True) if key.lower().startswith("ssl")}
    )
    if named:
        return (
            f"TLS parameters in the broker URL are not accepted ({', '.join(named)}): use rediss:// "
            "with MYCELIAL_BROKER_CA_FILE, MYCELIAL_BROKER_CERT_FILE and MYCELIAL_BROKER_KEY_FILE"
        )
    return None


@dataclass(frozen=True)
class BrokerTls:
    """How a ``rediss://`` broker is verified: its CA (None: the system's) and a client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """The verifying client context (raises TlsConfigError for an unusable file)."""
        return client_context(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)

    def redis_options(self) -> dict[str, Any]:
        """redis-py's TLS arguments; also Celery's ``broker_use_ssl`` (kombu hands them to redis-py)
        and Flower's. They ask for verification by themselves; VerifiedSSLConnection narrows the
        trust to the CA file."""
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
        if self.ca_file is not None:
            options["ssl_ca_certs"] = str(self.ca_file)
        if self.cert_file is not None:
            options["ssl_certfile"] = str(self.cert_file)
        if self.key_file is not None:
            options["ssl_keyfile"] = str(self.key_file)
        return options


class VerifiedSSLConnection(redis.SSLConnection):
    """redis-py's TLS connection with the handshake made by ``client_context``: certificate and host
    name always checked, and a CA file trusted alone (redis-py would add it to the system's store)."""

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        context = client_context(ca_file=self.ca_certs, cert_file=self.certfile, key_file=self.keyfile)
        return context.wrap_socket(sock, server_hostname=self.host)


# kombu's stubs do not know its Redis transport's classes
_KombuChannel: Any = kombu_redis.Channel
_KombuTransport: Any = kombu_redis.Transport
_PooledConnection: Any = PooledConnection
_ConnectionPool: Any = ConnectionPool


class VerifiedChannel(_KombuChannel):  # type: ignore[misc]
    """kombu's Redis channel making its rediss:// connections with VerifiedSSLConnection."""

    connection_class_ssl = VerifiedSSLConnection


class VerifiedTransport(_KombuTransport):  # type: ignore[misc]
    Channel = VerifiedChannel


class VerifiedPooledConnection(_PooledConnection):  # type: ignore[misc]
    """A pooled kombu connection (publishing, control replies) whose Redis transport verifies
    like the consumers' (cp/messaging/guarded_redis.py); not guarded, as kombu's are not."""

    def get_transport_cls(self) -> Any:
        cls = super().get_transport_cls()
        return VerifiedTransport if cls is kombu_redis.Transport else cls


class VerifiedConnectionPool(_ConnectionPool):  # type: ignore[misc]
    """kombu's connection pool making VerifiedPooledConnections."""

    def new(self) -> Any:
        return VerifiedPooledConnection(self, **dict(self.connection._info(resolve=False)))


def redis_url_client(url: str, *, tls: BrokerTls | None = None) -> redis.Redis:
    """A redis-py client for a ``redis://`` or ``rediss://`` URL; ``rediss://`` verified by ``tls``
    (default: the system's trust store)."""
    if not is_tls_url(url):
        return redis.Redis.from_url(url)
    problem = url_tls_problem(url)
    if problem:
        raise ValueError(problem)
    options = (tls or BrokerTls()).redis_options()
    return redis.Redis.from_url(url, connection_class=VerifiedSSLConnection, **options)
