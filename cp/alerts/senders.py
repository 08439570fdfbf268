"""Sending one notice to one notifier: a signed webhook, a log line, or Apprise.

Each sender returns a ``SendResult`` and never raises for what the far end or the environment does
wrong. Secrets are resolved here, at delivery time, on the control-plane worker; every error text
is scrubbed of what was resolved (and of connection-string credentials) before it leaves.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from cp.alerts.backoff import is_retryable_status
from cp.alerts.notifier_spec import AppriseNotifier, LogNotifier, WebhookNotifier
from cp.alerts.outbox import AlertNotice
from cp.alerts.signing import SigningKeyError, sign, signing_key
from workers.scrub import scrub
from workers.secrets import SecretError, resolve

log = logging.getLogger(__name__)
notice_log = logging.getLogger("mycelial.alerts.notices")
MAX_RESPONSE_BYTES = 1_024  # of an error response, kept as the attempt's error
MAX_ERROR_CHARS = 1_000
USER_AGENT = "mycelial-cp-notifier"


@dataclass(frozen=True)
class SendResult:
    ok: bool
    http_status: int | None = None
    error: str = ""
    retryable: bool = True


def body_bytes(notice: AlertNotice) -> bytes:
    """The exact bytes POSTed and signed: the notice body as compact JSON with sorted keys."""
    return json.dumps(notice.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _clean(text: str, secrets: set[str]) -> str:
    return scrub(text, secrets=secrets)[:MAX_ERROR_CHARS]


class WebhookSender:
    """POST per Standard Webhooks: ``webhook-id`` is the dedup key, the same on every attempt."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._clock = clock
        self._transport = transport

    def __call__(self, spec: WebhookNotifier, notice: AlertNotice) -> SendResult:
        secrets: set[str] = set()
        try:
            secret = resolve(spec.secret)
            secrets.add(secret)
            headers = {name: resolve(value) for name, value in spec.headers.items()}
            secrets.update(v for k, v in headers.items() if v != spec.headers[k])
            key = signing_key(secret)
        except (SecretError, SigningKeyError) as exc:
            # the operator can fix the environment or the file; later attempts pick it up
            return SendResult(ok=False, error=f"notifier {spec.name}: {_clean(str(exc), secrets)}")
        body = body_bytes(notice)
        timestamp = int(self._clock())
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": notice.dedup_key,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(key, msg_id=notice.dedup_key, timestamp=timestamp, body=body),
            }
        )
        try:
            with (
                httpx.Client(
                    timeout=spec.timeout, follow_redirects=False, transport=self._transport
                ) as client,
                client.stream("POST", spec.url, content=body, headers=headers) as response,
            ):
                if 200 <= response.status_code < 300:
                    return SendResult(ok=True, http_status=response.status_code)
                text = _read_prefix(response)
                return SendResult(
                    ok=False,
                    http_status=response.status_code,
                    error=_clean(f"HTTP {response.status_code}: {text}".strip(), secrets),
                    retryable=is_retryable_status(response.status_code),
                )
        except httpx.TimeoutException:
            return SendResult(ok=False, error=f"timed out after {spec.timeout:g}s")
        except (httpx.HTTPError, OSError, ValueError) as exc:  # ValueError: a header httpx cannot encode
            return SendResult(ok=False, error=_clean(f"{type(exc).__name__}: {exc}", secrets))


def _read_prefix(response: httpx.Response) -> str:
    """The first MAX_RESPONSE_BYTES of a response body, decoded leniently; the rest is never read."""
    kept = b""
    for chunk in response.iter_bytes():
        kept += chunk
        if len(kept) >= MAX_RESPONSE_BYTES:
            break
    return kept[:MAX_RESPONSE_BYTES].decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")


def send_to_log(spec: LogNotifier, notice: AlertNotice) -> SendResult:
    """One JSON line on the ``mycelial.alerts.notices`` logger."""
    level = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[spec.level]
    line = json.dumps(
        {"notifier": spec.name, "webhook_id": notice.dedup_key, **notice.body}, sort_keys=True, default=str
    )
    notice_log.log(level, "alert notice %s", line)
    return SendResult(ok=True)


def send_to_apprise(spec: AppriseNotifier, notice: AlertNotice) -> SendResult:
    """A title and a short text through Apprise (chat, mail and the rest it supports)."""
    try:
        import apprise  # the optional `notify` extra
    except ImportError:
        return SendResult(
            ok=False,
            error="apprise is not installed on this control-plane worker (pip install 'mycelial-cp[notify]')",
        )
    secrets: set[str] = set()
    try:
        url = resolve(spec.url)
        secrets.add(url)
    except SecretError as exc:
        return SendResult(ok=False, error=f"notifier {spec.name}: {exc}")
    title, text = apprise_message(notice.body)
    try:
        client = apprise.Apprise()
        if not client.add(url):
            return SendResult(
                ok=False, error=f"notifier {spec.name}: Apprise does not accept the URL", retryable=False
            )
        if client.notify(title=title, body=text):
            return SendResult(ok=True)
        return SendResult(ok=False, error=f"notifier {spec.name}: Apprise reports the notification failed")
    except Exception as exc:  # a plugin's own failure, whatever it is
        return SendResult(ok=False, error=_clean(f"{type(exc).__name__}: {exc}", secrets))


def apprise_message(body: dict[str, Any]) -> tuple[str, str]:
    """``[FIRING] rule (severity)`` and one line per alert."""
    alerts = body.get("alerts") or []
    title = f"[{str(body.get('status', '')).upper()}] {body.get('rule', '')} ({body.get('severity', '')})"
    lines = [
        f"{a.get('subject', '')}: {a.get('state', '')} {a.get('summary', '')}".strip() for a in alerts[:50]
    ]
    if len(alerts) > 50:
        lines.append(f"... and {len(alerts) - 50} more")
    return title[:250], "\n".join(lines)[:4_000] or title[:250]


def make_sender(*, webhook: WebhookSender | None = None) -> Callable[[Any, AlertNotice], SendResult]:
    """One callable that sends to any kind of notifier."""
    post = webhook or WebhookSender()

    def send(spec: Any, notice: AlertNotice) -> SendResult:
        if isinstance(spec, WebhookNotifier):
            return post(spec, notice)
        if isinstance(spec, LogNotifier):
            return send_to_log(spec, notice)
        if isinstance(spec, AppriseNotifier):
            return send_to_apprise(spec, notice)
        return SendResult(ok=False, error=f"unknown notifier kind {type(spec).__name__}", retryable=False)

    return send
