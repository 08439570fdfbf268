"""`mycelial status`: what is up in the control plane, and whether that counts as healthy. Pure.

The facts (a broker ping, a database query, the ``ProcessSeen`` rows, daemons' derived statuses,
runs by state) are gathered by cp/cli/status.py; this module turns them into one document and
the problems that make the command exit 1 (docs/health.md#mycelial-status).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cp.liveness import BEAT, WORKER
from cp.models import ProcessSeen

MAX_NAMES_SHOWN = 10  # offline daemons named in a problem line


@dataclass(frozen=True)
class Reachable:
    ok: bool
    latency_ms: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"reachable": self.ok, "latency_ms": self.latency_ms, "error": self.error}


def process_entry(row: ProcessSeen, *, now: datetime, seen_within: float) -> dict[str, Any]:
    """A worker or beat: alive when it noted itself within ``seen_within`` and did not stop."""
    age = (now - row.seen_at).total_seconds()
    return {
        "name": row.name,
        "hostname": row.hostname,
        "pid": row.pid,
        "started_at": _iso(row.started_at),
        "seen_at": _iso(row.seen_at),
        "seen_age_s": round(age, 1),
        "stopped_at": _iso(row.stopped_at),
        "alive": row.stopped_at is None and age <= seen_within,
    }


def daemon_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Daemons by shown status (``undeclared`` included), each status present."""
    counts = Counter(row["status"] for row in rows)
    for status in ("online", "degraded", "offline", "unknown"):
        counts.setdefault(status, 0)
    return dict(sorted(counts.items()))


def summarise(
    *,
    now: datetime,
    broker: Reachable,
    database: Reachable,
    processes: Sequence[ProcessSeen] | None,
    checker_ran_at: datetime | None,
    daemons: Sequence[dict[str, Any]] | None,
    runs_last_hour: dict[str, int] | None,
    seen_within: float,
    checker_stale_after: float,
    fail_on_offline: bool,
) -> dict[str, Any]:
    """The status document; ``problems`` lists what is down, ``ok`` is True when it is empty.

    ``None`` for processes, daemons and runs: the database could not be read.
    """
    problems: list[str] = []
    if not broker.ok:
        problems.append(f"broker unreachable: {broker.error}")
    if not database.ok:
        problems.append(f"database unreachable: {database.error}")
    doc: dict[str, Any] = {
        "ok": True,
        "checked_at": _iso(now),
        "problems": problems,
        "broker": broker.as_dict(),
        "database": database.as_dict(),
        "workers": None,
        "beat": None,
        "health_check": None,
        "daemons": None,
        "runs_last_hour": runs_last_hour,
        "thresholds": {"seen_within_s": seen_within, "checker_stale_after_s": checker_stale_after},
    }
    if processes is not None:
        workers = [process_entry(p, now=now, seen_within=seen_within) for p in processes if p.kind == WORKER]
        beats = [process_entry(p, now=now, seen_within=seen_within) for p in processes if p.kind == BEAT]
        doc["workers"], doc["beat"] = workers, beats
        if not any(w["alive"] for w in workers):
            problems.append(f"no control-plane worker running ({_last(workers, seen_within)})")
        if not any(b["alive"] for b in beats):
            problems.append(f"beat not running ({_last(beats, seen_within)})")
        age = (now - checker_ran_at).total_seconds() if checker_ran_at is not None else None
        stale = age is None or age > checker_stale_after
        doc["health_check"] = {
            "last_ran_at": _iso(checker_ran_at),
            "age_s": round(age, 1) if age is not None else None,
            "stale": stale,
        }
        if stale:
            when = "never ran" if age is None else f"last ran {age:.0f}s ago"
            problems.append(f"health checks not running: {when} (stale after {checker_stale_after:.0f}s)")
    if daemons is not None:
        declared = [d for d in daemons if d.get("declared")]
        doc["daemons"] = daemon_counts(daemons)
        offline = [d["name"] for d in declared if d["status"] == "offline"]
        if fail_on_offline and offline:
            shown = ", ".join(offline[:MAX_NAMES_SHOWN])
            more = f" and {len(offline) - MAX_NAMES_SHOWN} more" if len(offline) > MAX_NAMES_SHOWN else ""
            problems.append(f"daemons offline: {shown}{more}")
    doc["ok"] = not problems
    return doc


def _last(entries: Sequence[dict[str, Any]], seen_within: float) -> str:
    """What became of the newest of ``entries``, none of them alive."""
    if not entries:
        return "never seen"
    newest = min(entries, key=lambda e: e["seen_age_s"])
    if newest["stopped_at"]:
        return f"the last one, {newest['name']}, stopped {newest['seen_age_s']:.0f}s ago"
    return f"{newest['name']} last seen {newest['seen_age_s']:.0f}s ago, over {seen_within:.0f}s"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
