"""Flower's own Redis client (its broker page and ``/api/queues/length``) made to verify a
``rediss://`` broker the way every other connection does (cp/tls/broker.py).

Flower builds that client itself, per request, with ``redis.asyncio.Redis(ssl=True,
**broker_use_ssl)``: verified, but against the system's store with the CA file added. It looks
its ``RedisSsl`` class up by name when a page asks for a client, so a subclass put in its place
before Flower starts is the one used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis import asyncio as redis_asyncio
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection

from cp.tls.context import client_context


class VerifiedAsyncSSLConnection(AsyncSSLConnection):
    """redis-py's asyncio TLS connection with ``client_context``'s verification."""

    def _connection_arguments(self) -> Mapping[str, Any]:
        arguments = dict(super()._connection_arguments())
        arguments["ssl"] = client_context(
            ca_file=self.ca_certs, cert_file=self.certfile, key_file=self.keyfile
        )
        return arguments


def verify_flower_broker_client() -> None:
    """Put a RedisSsl that connects with VerifiedAsyncSSLConnection in Flower's place (idempotent)."""
    from flower.utils import broker as flower_broker

    base: Any = flower_broker.RedisSsl
    if getattr(base, "verified", False):
        return

    class VerifiedRedisSsl(base):  # type: ignore[misc]
        verified = True

        def _get_redis_client(self) -> Any:
            arguments = self._get_redis_client_args()
            arguments.pop("ssl", None)
            pool = redis_asyncio.ConnectionPool(connection_class=VerifiedAsyncSSLConnection, **arguments)
            return redis_asyncio.Redis.from_pool(pool)  # closing the client closes its pool

    flower_broker.RedisSsl = VerifiedRedisSsl
