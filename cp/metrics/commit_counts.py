"""Counts what a control-plane worker's transactions commit: runs that reached a final state (and
the rows they wrote) and events recorded. Seen in the session's flushes, added to the shared
counters only when the transaction commits, so a rolled-back change is never counted.

Runs inserted or changed by bulk statements bypass the session's objects: those that end in a
final state (the scheduler's skipped fires) are counted from the state changes written with them
(``count_bulk_changes``, called by cp/run_history.py). No bulk ``UPDATE`` of the control plane
moves a run to a final state (the scheduler's claims move runs to ``queued``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session as OrmSession

from cp.metrics.counters import EVENTS, ROWS_WRITTEN, RUNS_FINISHED, SharedCounters
from cp.models import FINISHED_RUN_STATES, DaemonEvent, Run, RunState

_PENDING = "mycelial_metrics_pending"
_FINISHED_VALUES = frozenset(state.value for state in FINISHED_RUN_STATES)
_COUNTING: list[SharedCounters] = []  # the listeners are installed once per process, for all of these


def _finished_now(run: Run, *, is_new: bool) -> bool:
    if run.state not in FINISHED_RUN_STATES:
        return False
    if is_new:
        return True
    history = inspect(run).attrs.state.history
    return bool(history.added) and not any(
        RunState(str(s)) in FINISHED_RUN_STATES for s in history.deleted if s is not None
    )


def seen_in_flush(session: OrmSession) -> Counter[tuple[str, ...]]:
    """What the session is about to write that counts (call before the flush)."""
    seen: Counter[tuple[str, ...]] = Counter()
    for obj, is_new in [(o, True) for o in session.new] + [(o, False) for o in session.dirty]:
        if isinstance(obj, Run) and _finished_now(obj, is_new=is_new):
            seen[(RUNS_FINISHED, obj.pipeline, str(obj.state))] += 1
            if obj.rows_written:
                seen[(ROWS_WRITTEN, obj.pipeline)] += int(obj.rows_written)
        elif isinstance(obj, DaemonEvent) and is_new:
            seen[(EVENTS, obj.kind)] += 1
    return seen


def count_bulk_changes(session: OrmSession, changes: Sequence[Mapping[str, Any]]) -> None:
    """Runs that bulk-written state changes (``RunStateChange`` rows) move to a final state."""
    if not _COUNTING:
        return
    seen: Counter[tuple[str, ...]] = Counter()
    for change in changes:
        state = str(change.get("to_state"))
        if state in _FINISHED_VALUES:
            seen[(RUNS_FINISHED, str(change.get("pipeline")), state)] += 1
    if seen:
        session.info.setdefault(_PENDING, Counter()).update(seen)


def count_commits(counters: SharedCounters) -> None:
    """From now on, every session of this process counts into ``counters`` what it commits."""
    if any(c is counters for c in _COUNTING):
        return
    _COUNTING.append(counters)
    if len(_COUNTING) > 1:
        return

    def before_flush(session: OrmSession, _context: Any, _instances: Any) -> None:
        seen = seen_in_flush(session)
        if seen:
            session.info.setdefault(_PENDING, Counter()).update(seen)

    def after_commit(session: OrmSession) -> None:
        pending = session.info.pop(_PENDING, None)
        for (metric, *labels), amount in (pending or {}).items():
            for each in _COUNTING:
                each.add(metric, *labels, amount=amount)

    def after_rollback(session: OrmSession) -> None:
        session.info.pop(_PENDING, None)

    event.listen(OrmSession, "before_flush", before_flush)
    event.listen(OrmSession, "after_commit", after_commit)
    event.listen(OrmSession, "after_soft_rollback", lambda s, _t: after_rollback(s))
