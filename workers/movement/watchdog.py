"""A thread that cancels what the connectors are running once an attempt's deadline passes.

Server-side timeouts stop most waits, but not every one (a COPY stalled on a lock taken after it
started, a server that ignores a setting); the watchdog makes sure nothing outlasts the deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from types import TracebackType

from workers.movement.deadline import Deadline
from workers.movement.interface import Connector

log = logging.getLogger(__name__)
REPEAT = 1.0  # seconds between cancels after the deadline, for a statement sent after the last one


class Watchdog:
    """Use as a context manager around the attempt; does nothing for an attempt without a limit."""

    def __init__(self, deadline: Deadline, connectors: Sequence[Connector], *, name: str) -> None:
        self._deadline = deadline
        self._connectors = list(connectors)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"mycelial-watchdog-{name}", daemon=True)
        self.fired = False

    def __enter__(self) -> Watchdog:
        if self._deadline.at is not None:
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        left = self._deadline.left()
        while not self._done.wait(left):
            if not self.fired:
                log.warning(
                    "time limit of %ss reached; cancelling what %s are running",
                    f"{self._deadline.limit:g}",
                    " and ".join(c.name for c in self._connectors),
                )
            self.fired = True
            for connector in self._connectors:
                try:
                    connector.interrupt()
                except Exception:
                    # a failed cancel must not end the watch: the next one may succeed
                    log.warning("cannot cancel the statement of %s", connector.name, exc_info=True)
            left = REPEAT
