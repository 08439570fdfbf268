"""A daemon's log shipping put together: its spool under the daemon's home, the handler on the
root logger, and the sender publishing ``cp.logs`` batches through the daemon's Celery app."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from celery import Celery

from cp.messaging.broker_client import broker_client
from cp.protocol import CP_LOGS, CP_QUEUE, SEQ, log_ack_key
from cp.settings import Settings
from workers.logs.capture import LogCapture, attach, detach
from workers.logs.shipper import AcksUnsupported, LogShipper
from workers.logs.spool import LogSpool
from workers.secrets import scrubbed

log = logging.getLogger(__name__)


class AckReader:
    """Reads the control plane's acknowledgement key over one connection, remade after an error."""

    def __init__(self, app: Celery, name: str) -> None:
        self._app = app
        self._key = log_ack_key(name)
        self._made: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> int | None:
        with self._lock:
            if self._made is None:
                self._made = broker_client(self._app)
                if self._made is None:
                    raise AcksUnsupported
            try:
                value = self._made[1].get(self._key)
            except Exception:
                self.close()
                raise
        return int(value) if value is not None else None

    def close(self) -> None:
        made, self._made = self._made, None
        if made is not None:
            try:
                made[0].release()
            except Exception:
                log.debug("closing the log acknowledgement connection failed", exc_info=True)


class LogShipping:
    def __init__(self, settings: Settings, app: Celery, *, name: str, directory: Path) -> None:
        self.name = name
        self._app = app
        self.spool = LogSpool(directory, max_bytes=settings.log_spool_max_bytes)
        self._acks = AckReader(app, name)
        self.shipper = LogShipper(
            self.spool,
            name=name,
            publish=self._publish,
            read_ack=self._acks,
            interval=settings.log_batch_interval,
            batch_records=settings.log_batch_records,
            ack_timeout=settings.log_ack_timeout,
            max_ack_timeout=settings.replay_window,
        )
        self.level = logging.getLevelName(settings.log_level.upper())
        self._starting = threading.Lock()
        self._sending = False
        self.capture = LogCapture(
            self.spool, scrub=scrubbed, on_record=self.shipper.notify, ignore=self.shipper.is_sender
        )

    def _publish(self, payload: dict[str, Any]) -> None:
        first, last = payload["rows"][0][SEQ], payload["rows"][-1][SEQ]
        self._app.send_task(
            CP_LOGS,
            args=[payload],
            queue=CP_QUEUE,
            argsrepr=f"daemon={self.name} logs seq={first}-{last}",
            kwargsrepr="{}",
            retry=False,
        )

    def start(self, *, send: bool = True) -> None:
        """Capture from now on; send too unless the daemon is still enrolling (a batch signed with
        a key the control plane does not know yet is refused: the records wait in the spool)."""
        attach(self.capture, level=self.level)
        if send:
            self.start_sending()

    def start_sending(self) -> None:
        with self._starting:
            if not self._sending:
                self._sending = True
                self.shipper.start()

    def close(self, *, timeout: float) -> None:
        """Ship for up to ``timeout`` seconds; the rest waits on disk for the next process."""
        detach(self.capture)
        self.shipper.close(timeout=timeout)
        self._acks.close()
