"""A Redis client on the broker, made the way the app makes its broker connections."""

from __future__ import annotations

from typing import Any

from celery import Celery


def broker_client(app: Celery) -> tuple[Any, Any] | None:
    """A kombu connection and its channel's Redis client (the same URL, TLS options and socket
    path as every other broker connection of ``app``); None when the broker is not Redis.
    Release the connection when done."""
    connection = app.connection_for_write()
    client = getattr(connection.default_channel, "client", None)
    if client is None or not hasattr(client, "pipeline"):
        connection.release()
        return None
    return connection, client
