"""A Celery Consumer whose task handler checks each message first and never lets one raise.

Celery's ``on_task_received`` reads ``message.headers['task']`` as a dict key and unpacks the body
before any task code runs (DESIGN section 12): a list as task name, a missing id or a body that is
not ``[args, kwargs, embed]`` escapes into the event loop and stops the worker, and the message is
restored and stops the next one too. Here such a message is acked and dead-lettered instead, and
any other exception while Celery handles one message is treated the same way. Flower, told of the
task by its sender, hears ``task-rejected`` for it (docs/monitoring.md).
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.utils.json import loads as kombu_loads
from vine import promise

from cp.broker_reconnect import ReconnectingConsumer
from cp.messaging.envelope_check import Rejection, check_task_body, message_copy
from cp.messaging.guard import Guard
from cp.messaging.unlisted import UNLISTED_TASKS
from cp.models import utcnow
from cp.security.signer import payload_of

log = logging.getLogger(__name__)
_Consumer: Any = ReconnectingConsumer  # it also rides through broker outages


def guarded_consumer_class(guard: Guard) -> type[Any]:
    """A Consumer subclass bound to ``guard`` (Celery's ``worker_consumer`` setting takes a class)."""

    class GuardedConsumer(_Consumer):  # type: ignore[misc]
        guard: Guard

        def create_task_handler(self, promise: Any = promise) -> Any:
            handle = super().create_task_handler(promise)
            registered = self.app.tasks
            connection_errors = tuple(self.connection_errors)

            def on_task_received(message: Any) -> None:
                decoded: object = None
                try:
                    reason, decoded = check_task_body(
                        headers=message.headers,
                        body=message.body,
                        content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        registered=registered,
                        limits=guard.limits,
                        now=utcnow(),
                    )
                except Exception as exc:  # the check itself must not stop the loop either
                    reason = f"message could not be checked: {type(exc).__name__}: {exc}"
                if reason is None and guard.authenticator is not None:
                    try:
                        refusal = authenticate(guard, message, decoded)
                    except Exception as exc:  # neither may the authentication
                        refusal = f"message could not be authenticated: {type(exc).__name__}: {exc}"
                    if refusal is not None:
                        _reject(guard, message, refusal, False, kind="security")
                        _announce_rejected(self, message)
                        return
                if reason is None:
                    if decoded is not None and getattr(message, "_decoded_cache", None) is None:
                        # the body checked above is the body Celery reads: decoding it again
                        # (a large log batch: milliseconds) would only repeat the same work
                        message._decoded_cache = decoded
                    try:
                        handle(message)
                        return
                    except connection_errors:
                        raise  # the consumer reconnects; the message is redelivered
                    except Exception as exc:
                        _reject(guard, message, f"unexpected error: {type(exc).__name__}: {exc}", True)
                        _announce_rejected(self, message)
                        return
                _reject(guard, message, reason, False)
                _announce_rejected(self, message)

            return on_task_received

    GuardedConsumer.guard = guard
    return GuardedConsumer


def authenticate(guard: Guard, message: Any, decoded: object = None) -> str | None:
    """Ask the guard's authenticator about a message ``check_task`` found well-formed (and
    decoded: ``decoded``, else it is decoded here)."""
    assert guard.authenticator is not None
    headers = message.headers
    body = message.body
    if decoded is None:
        decoded = kombu_loads(body.decode("utf-8") if isinstance(body, bytes) else body)
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    redis = getattr(message.channel, "conn_or_acquire", None)
    authenticator = guard.authenticator
    refusal = authenticator.check(
        task=headers["task"],
        task_id=headers["id"],
        queue=str(info.get("routing_key") or ""),
        headers=headers,
        payload=payload_of(decoded),
        redis=redis,
    )
    if refusal is None:
        # once acknowledged the message is done: a copy is a replay, while a redelivery of a message
        # whose consumer died before acknowledging it passes (Celery acks through message.ack)
        original_ack = message.ack

        def ack(*args: Any, **kwargs: Any) -> Any:
            result = original_ack(*args, **kwargs)
            try:
                authenticator.processed(headers=headers, redis=redis)
            except Exception as exc:  # the broker going away: the nonce stays only "seen"
                log.warning("could not mark message %s processed: %s", headers.get("id"), exc)
            return result

        message.ack = ack
    return refusal


def _announce_rejected(consumer: Any, message: Any) -> None:
    """Tell Flower a task its sender announced (``task-sent``) will never run, so it shows REJECTED
    instead of PENDING for ever; never raises. Housekeeping stays unannounced (unlisted.py)."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id, task = headers.get("id"), headers.get("task")
    if dispatcher is None or not getattr(dispatcher, "enabled", False):
        return
    if not (isinstance(task_id, str) and isinstance(task, str)) or task in UNLISTED_TASKS:
        return
    try:
        dispatcher.send("task-rejected", uuid=task_id[:255], name=task[:255], requeue=False)
    except Exception as exc:  # the broker going away: Flower keeps showing it pending
        log.warning("could not announce the rejected message %s: %s", task_id[:255], exc)


def _reject(guard: Guard, message: Any, reason: str, exc_info: bool, kind: str = "message_rejected") -> None:
    headers = message.headers if isinstance(message.headers, dict) else {}
    task, task_id = headers.get("task"), headers.get("id")
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    rejection = Rejection(
        queue=str(info.get("routing_key") or "?")[:255],
        reason=reason[:2_000],
        task=task[:255] if isinstance(task, str) else None,
        task_id=task_id[:255] if isinstance(task_id, str) else None,
        copy=message_copy({"headers": message.headers, "body": message.body}, limit=guard.copy_chars),
        kind=kind,
    )
    channel = message.channel
    guard.reject(rejection, redis=getattr(channel, "conn_or_acquire", None), exc_info=exc_info)
    try:
        if not message.acknowledged:
            message.ack()
    except Exception as exc:  # a lost connection: the message comes back and is rejected again
        log.warning("could not acknowledge a rejected message on %s: %s", rejection.queue, exc)
