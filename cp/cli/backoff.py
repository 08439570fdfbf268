"""When ``mycelial up`` starts a child again that exited: the delay doubles for exits in a row."""

from __future__ import annotations

from dataclasses import dataclass

MAX_DOUBLINGS = 32  # past this the limit has long been reached; keeps 2**n a small number


@dataclass
class RestartBackoff:
    """1 s, 2 s, 4 s … up to ``limit`` for a child that keeps exiting; one that stayed up for
    ``steady_after`` seconds before it exited is started again after ``first`` once more."""

    first: float = 1.0
    limit: float = 60.0
    steady_after: float = 60.0
    exits_in_a_row: int = 0

    def delay(self, *, ran_for: float) -> float:
        """Seconds to wait before the next start of a child that exited after ``ran_for`` seconds."""
        if ran_for >= self.steady_after:
            self.exits_in_a_row = 0
        delay = min(self.limit, self.first * 2.0 ** min(self.exits_in_a_row, MAX_DOUBLINGS))
        self.exits_in_a_row += 1
        return delay
