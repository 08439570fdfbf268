"""A real HTTP receiver on 127.0.0.1 for alert notices: it checks each request's Standard
Webhooks signature and records it. Shared by the notification and end-to-end alert tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cp.alerts.signing import signing_key, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Received:
    path: str
    webhook_id: str | None
    signature_ok: bool
    body: dict[str, Any]


@dataclass
class Receiver:
    """A threaded HTTP server on 127.0.0.1 that checks each request's signature and records it;
    ``script[path]`` lists the statuses its next requests to ``path`` get (then 200)."""

    port: int = 0
    secret: str = SECRET
    received: list[Received] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)
    # seconds each answer takes: deliveries overlap other workers' claims, as they would in the field
    delay: float = 0.0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self
        key = signing_key(self.secret)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                time.sleep(receiver.delay)
                webhook_id, stamp = self.headers.get("webhook-id"), self.headers.get("webhook-timestamp")
                signed = webhook_id is not None and stamp is not None and stamp.isdigit()
                ok = signed and verify(
                    key,
                    msg_id=str(webhook_id),
                    timestamp=int(str(stamp)),
                    body=raw,
                    header=self.headers.get("webhook-signature", ""),
                )
                with receiver._lock:
                    receiver.received.append(Received(self.path, webhook_id, ok, json.loads(raw or b"{}")))
                    statuses = receiver.script.get(self.path, [])
                    status = statuses.pop(0) if statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def ids(self, path: str) -> list[str | None]:
        with self._lock:
            return [r.webhook_id for r in self.received if r.path == path]

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
