"""What a daemon answers to the admins' `celery inspect mycelial_*` commands: plain data, bounded.

Celery's remote-control channel is not signed (docs/security.md): anyone who can publish on the
broker can ask, and anyone who can write a reply list can answer. So an answer holds nothing
secret and nothing unbounded: versions, checksums, names and kinds, counts; never a connector's
options (DSNs, paths, secret references), never an error text that could quote one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
from collections.abc import Callable, Sequence
from datetime import datetime
from types import ModuleType
from typing import Any

import cp
from cp.protocol import ApplyConfig
from workers.movement.registry import CONNECTORS
from workers.progress import RunProgress

MAX_PIPELINES_SHOWN = 100
MAX_RUNS_SHOWN = 50
REFRESH_EVERY = 10.0  # seconds: at most one config request to the control plane per this time


def config_report(applied: ApplyConfig | None, *, applied_at: datetime | None) -> dict[str, Any]:
    """The config this daemon applied last: version, checksum and pipeline names."""
    if applied is None:
        return {"applied": None}
    names = [p.name for p in applied.state.pipelines]
    return {
        "applied": {
            "version": applied.version,
            "checksum": applied.checksum,
            "applied_at": applied_at.isoformat() if applied_at else None,
            "pipelines": len(names),
            "pipeline_names": names[:MAX_PIPELINES_SHOWN],
        }
    }


def runs_report(runs: Sequence[RunProgress], *, now: datetime) -> dict[str, Any]:
    """The jobs running here, longest first, with their rows so far (as of their last progress)."""
    shown = [
        {
            "run_key": run.run_key,
            "pipeline": run.pipeline,
            "attempt": run.attempt,
            "started_at": run.started_at.isoformat(),
            "seconds": round(max(0.0, (now - run.started_at).total_seconds()), 1),
            "rows_read": run.rows_read,
            "rows_written": run.rows_written,
        }
        for run in runs[:MAX_RUNS_SHOWN]
    ]
    return {"running": shown, "not_shown": max(0, len(runs) - MAX_RUNS_SHOWN)}


def software_report(*, load: Callable[[str], ModuleType] = importlib.import_module) -> dict[str, Any]:
    """Versions, and each connector kind with whether its driver imports in this process."""
    return {
        "mycelial": cp.__version__,
        "python": platform.python_version(),
        "celery": importlib.metadata.version("celery"),
        "kombu": importlib.metadata.version("kombu"),
        "connectors": [_connector(kind, load=load) for kind in sorted(CONNECTORS)],
    }


def _connector(kind: str, *, load: Callable[[str], ModuleType]) -> dict[str, Any]:
    module, _source, sink, extra = CONNECTORS[kind]
    entry: dict[str, Any] = {"kind": kind, "source": True, "sink": sink is not None}
    try:
        load(module)
    except ImportError as exc:
        # a module name, never the message: an import error can quote a path
        entry.update(driver="missing", missing_module=str(exc.name or "?")[:100])
        if extra:
            entry["install"] = f"pip install 'mycelial-control-plane[{extra}]'"
    except Exception as exc:  # a driver that breaks on import is reported, not raised
        entry.update(driver="broken", error_type=type(exc).__name__[:100])
    else:
        entry["driver"] = "ok"
    return entry


class RefreshLimit:
    """At most one config request per ``every`` seconds, however often the command arrives."""

    def __init__(self, *, every: float = REFRESH_EVERY) -> None:
        self.every = every
        self._last: float | None = None

    def wait_left(self, *, now: float) -> float:
        """0 and the request counted when one may go now; else the seconds until one may."""
        if self._last is not None and now - self._last < self.every:
            return self.every - (now - self._last)
        self._last = now
        return 0.0
