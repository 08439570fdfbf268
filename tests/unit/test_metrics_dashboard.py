"""examples/grafana-dashboard.json is valid JSON and uses only metrics the collector exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
from sqlalchemy.engine import Engine
from sqlmodel import Session

from cp.health import HealthLimits
from cp.metrics.collector import CollectorLimits, ControlPlaneCollector

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\bmycelial_[a-z0-9_]+")
SAMPLE_SUFFIXES = {"counter": ("_total",), "gaugehistogram": ("_bucket", "_gsum", "_gcount")}


def exported_families(engine: Engine) -> dict[str, set[str]]:
    """Every family the collector produces, with the sample names it can have (its type's suffixes)."""

    @contextmanager
    def session() -> Iterator[Session]:
        with Session(engine) as s:
            yield s

    @contextmanager
    def broker() -> Iterator[Any]:
        yield fakeredis.FakeRedis()

    collector = ControlPlaneCollector(
        session=session,
        broker=broker,
        limits=CollectorLimits(
            health=HealthLimits(offline_after=15, probe_timeout=5, backlog_threshold=100),
            stale_after=15,
            max_daemons=10,
            max_pipelines=10,
            peek_bytes=1024,
        ),
        clock=lambda: datetime(2025, 6, 2, tzinfo=UTC),
    )
    return {
        family.name: {family.name + s for s in SAMPLE_SUFFIXES.get(family.type, ("",))}
        for family in collector.collect()
    }


def expressions(document: dict[str, Any]) -> Iterator[str]:
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in document["templating"]["list"]:
        if variable.get("type") == "query":
            yield variable["query"]


def test_every_expression_of_the_dashboard_names_an_exported_metric(engine: Engine) -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    families = exported_families(engine)
    used = {name for expr in expressions(document) for name in METRIC_NAME.findall(expr)}
    assert used, "the dashboard queries no metric"
    assert used - set().union(*families.values()) == set()
    # and every daemon, queue, pipeline and control-plane metric has a panel
    unshown = {
        family
        for family, samples in families.items()
        if family.startswith(("mycelial_daemon_", "mycelial_pipeline_", "mycelial_cp_"))
        and not samples & used
    }
    assert unshown == set()
