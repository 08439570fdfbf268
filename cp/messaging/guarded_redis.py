"""kombu's Redis transport with every popped item checked before kombu decodes it.

kombu's ``Channel._brpop_read`` pops an item (BRPOP: it is gone from Redis then), runs ``loads``
on it and builds a ``Message`` from it inside the worker's event loop: a non-JSON push or an
envelope without ``properties`` raises there and restarts the worker, and the message is lost.
Here the item is checked first (size before decoding, JSON, the envelope's fields) and a bad one
is dead-lettered instead. The transport is chosen by class, after kombu resolves the broker URL,
so ``redis://``, ``rediss://`` and ``redis+socket://`` all get it (a ``broker_transport`` setting
would not: kombu replaces it for ``redis+socket://`` URLs and then loses the ``rediss`` TLS
default).
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from celery.app.amqp import AMQP
from kombu import Connection
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads as kombu_loads

from cp.messaging.envelope_check import Rejection, check_raw, message_copy
from cp.messaging.guard import Guard
from cp.messaging.unlisted import without_sent_event
from cp.security.signer import SigningProducer
from cp.tls.broker import VerifiedConnectionPool, VerifiedSSLConnection

log = logging.getLogger(__name__)

# kombu's stubs do not know the Redis channel's internals this module works with
_RedisChannel: Any = kombu_redis.Channel
_RedisTransport: Any = kombu_redis.Transport
_Connection: Any = Connection
_AMQP: Any = AMQP
Empty: Any = kombu_redis.Empty  # type: ignore[attr-defined]


class GuardedChannel(_RedisChannel):  # type: ignore[misc]
    """A Redis channel that admits only well-formed envelopes to kombu."""

    # rediss:// connections verify the broker against the configured CA alone (cp/tls/broker.py)
    connection_class_ssl = VerifiedSSLConnection

    def _guard(self) -> Guard | None:
        guard = getattr(self.connection.client, "guard", None)
        return guard if isinstance(guard, Guard) else None

    def _admit(self, item: bytes, *, queue: str) -> dict[str, Any] | None:
        """The envelope to deliver, or ``None`` when ``item`` was rejected."""
        guard = self._guard()
        if guard is None:
            return kombu_loads(bytes_to_str(item))  # type: ignore[no-any-return]
        try:
            envelope, reason = check_raw(item, queue=queue, limits=guard.limits)
        except Exception as exc:  # the check must not stop the loop either
            envelope, reason = None, f"message could not be checked: {type(exc).__name__}: {exc}"
        if envelope is not None:
            return envelope
        rejection = Rejection(
            queue=queue,
            reason=reason or "rejected",
            copy=message_copy(item[: guard.copy_chars], limit=guard.copy_chars),
        )
        guard.reject(rejection, redis=self.conn_or_acquire)
        return None

    # kombu 5.7's _brpop_read with the item admitted before it is decoded (tests/unit/
    # test_guarded_redis.py notices when kombu's own version changes)
    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                envelope = self._admit(item, queue=dest)
                if envelope is not None:
                    self._deliver_admitted(envelope, dest)
                return True
            else:
                raise Empty()
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    envelope = self._admit(item, queue=queue)
                    if envelope is not None:
                        return envelope
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def _deliver_admitted(self, envelope: dict[str, Any], queue: str) -> None:
        try:
            self.connection._deliver(envelope, queue)
        except self.connection_errors:
            raise
        except Exception as exc:  # kombu could not make a Message of it after all
            guard = self._guard()
            if guard is None:
                raise
            rejection = Rejection(
                queue=queue,
                reason=f"unexpected error: {type(exc).__name__}: {exc}",
                copy=message_copy(envelope, limit=guard.copy_chars),
            )
            guard.reject(rejection, redis=self.conn_or_acquire, exc_info=True)


class GuardedTransport(_RedisTransport):  # type: ignore[misc]
    Channel = GuardedChannel


def guarded_connection_class(guard: Guard) -> type[Any]:
    """A kombu Connection carrying ``guard`` that uses GuardedTransport where kombu picks Redis."""

    class GuardedConnection(_Connection):  # type: ignore[misc]
        guard: Guard

        def get_transport_cls(self) -> Any:
            cls = super().get_transport_cls()
            return GuardedTransport if cls is kombu_redis.Transport else cls

        def Pool(self, limit: int | None = None, **kwargs: Any) -> Any:
            # Celery publishes through this pool; kombu's own would make plain connections, whose
            # TLS trusts the system's store beside the CA file (cp/tls/broker.py)
            return VerifiedConnectionPool(self, limit=limit, **kwargs)

    GuardedConnection.guard = guard
    return GuardedConnection


def guarded_amqp_class(guard: Guard) -> type[Any]:
    """Celery's AMQP helper whose connections are guarded (the ``amqp`` argument of ``Celery``)."""

    class GuardedAMQP(_AMQP):  # type: ignore[misc]
        Connection = guarded_connection_class(guard)

        @cached_property
        def send_task_message(self) -> Any:
            inner = self._create_task_sender()

            def send(producer: Any, name: str, message: Any, **options: Any) -> Any:
                # the envelope is made where the routing key is final (cp/security/signer.py)
                if guard.signer is not None:
                    producer = SigningProducer(producer, guard.signer, name)
                return inner(producer, name, without_sent_event(name, message), **options)

            return send

    return GuardedAMQP
