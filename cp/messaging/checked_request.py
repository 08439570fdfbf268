"""Celery's task Request, taking the body the guarded consumer already decoded and checked.

Celery hands a protocol-2 message's raw body to the pool, which decodes it a second time before
the task runs; for a large message (a 1,000-record log batch) that is milliseconds of holding
the GIL the consumer's event loop needs. The guard (cp/messaging/guarded_consumer.py) decodes
the body with kombu's own ``loads`` to check it, and leaves it in the message's decode cache;
this Request passes that on as decoded, exactly as Celery does for protocol-1 messages.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

_Request: Any = Request  # celery-types leaves the Request's constructor untyped


class CheckedBodyRequest(_Request):  # type: ignore[misc]
    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        decoded = getattr(message, "_decoded_cache", None)
        if not kwargs.get("decoded") and kwargs.get("body") is message.body and isinstance(decoded, list):
            kwargs.update(body=decoded, decoded=True)
        super().__init__(message, *args, **kwargs)
