"""`mycelial up` starts a child again after 1 s, doubling for exits in a row up to 60 s; a child
that stayed up a while starts the count afresh."""

from __future__ import annotations

import signal

from cp.cli.backoff import RestartBackoff
from cp.cli.supervisor import exit_description


def test_a_child_that_keeps_exiting_waits_twice_as_long_each_time_up_to_the_limit() -> None:
    backoff = RestartBackoff(first=1.0, limit=60.0, steady_after=60.0)
    delays = [backoff.delay(ran_for=0.5) for _ in range(9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_a_child_that_stayed_up_past_steady_after_is_started_again_after_the_first_delay() -> None:
    backoff = RestartBackoff(first=1.0, limit=60.0, steady_after=60.0)
    for _ in range(5):
        backoff.delay(ran_for=1.0)
    assert backoff.delay(ran_for=60.0) == 1.0
    assert backoff.delay(ran_for=59.9) == 2.0


def test_thousands_of_exits_in_a_row_stay_at_the_limit() -> None:
    backoff = RestartBackoff(first=1.0, limit=60.0)
    for _ in range(5_000):
        delay = backoff.delay(ran_for=0.0)
    assert delay == 60.0


def test_an_exit_is_described_by_its_code_or_its_signal() -> None:
    assert exit_description(0) == "exited with code 0"
    assert exit_description(1) == "exited with code 1"
    assert exit_description(-signal.SIGKILL) == "was killed by SIGKILL"
    assert exit_description(-200) == "was killed by signal 200"
