"""The Prometheus collector: every family built at scrape time from one SQL read and one Redis
pipeline (docs/metrics.md lists each metric)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from cp.db_errors import describe
from cp.health import HealthLimits
from cp.metrics import counters as c
from cp.metrics.queues import QueueReading, parse_reply, queue_script
from cp.metrics.readings import Distribution, SqlReadings, read_sql
from cp.models import DaemonStatus

log = logging.getLogger(__name__)

DAEMON_STATUSES = tuple(s.value for s in DaemonStatus)


@dataclass(frozen=True, kw_only=True)
class CollectorLimits:
    health: HealthLimits
    stale_after: float
    max_daemons: int
    max_pipelines: int
    peek_bytes: int


@dataclass
class BrokerReadings:
    queues: dict[str, QueueReading]
    counters: list[tuple[str, tuple[str, ...], int]]


def read_broker(client: Any, names: list[str], *, peek_bytes: int) -> BrokerReadings:
    """Every queue's depth and oldest message, and the shared counters: one pipeline."""
    pipe = client.pipeline(transaction=False)
    script = queue_script(names, peek_bytes=peek_bytes)
    if script is not None:
        pipe.eval(*script)
    pipe.hgetall(c.COUNTERS_KEY)
    replies = pipe.execute()
    queues = parse_reply(names, replies[0]) if script is not None else {}
    return BrokerReadings(queues=queues, counters=list(c.parse_counters(replies[-1])))


class ControlPlaneCollector(Collector):
    """Reads the tables and the broker on every ``collect``; no broadcast to workers or daemons."""

    def __init__(
        self,
        *,
        session: Callable[[], Any],
        broker: Callable[[], Any],
        limits: CollectorLimits,
        clock: Callable[[], datetime],
    ) -> None:
        self._session = session  # a context manager factory yielding a Session
        self._broker = broker  # a context manager factory yielding a Redis client
        self._limits = limits
        self._clock = clock
        # scrapes at once take turns: N scrapers cost the database one scrape at a time
        self._one_at_a_time = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._one_at_a_time:
            families = list(self._collect())
        yield from families

    def _collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        now = self._clock()
        up = GaugeMetricFamily(
            "mycelial_metrics_source_up", "1 when this scrape could read the source.", labels=["source"]
        )
        sql: SqlReadings | None = None
        try:
            with self._session() as session:
                sql = self._read_sql(session, now)
            up.add_metric(["database"], 1)
        except Exception as exc:
            reason = describe(exc) if isinstance(exc, SQLAlchemyError) else type(exc).__name__
            log.warning("metrics: could not read the database: %s", reason)
            up.add_metric(["database"], 0)
        names = [r.daemon.name for r in sql.daemons] if sql else []
        broker: BrokerReadings | None = None
        try:
            with self._broker() as client:
                broker = read_broker(client, names, peek_bytes=self._limits.peek_bytes)
            up.add_metric(["broker"], 1)
        except Exception as exc:
            log.warning("metrics: could not read the broker: %s", exc)
            up.add_metric(["broker"], 0)
        yield up
        if sql is not None:
            yield from daemon_families(sql, now)
            yield from pipeline_families(sql)
            yield from alert_families(sql)
        if broker is not None:
            yield from queue_families(broker.queues, now)
            known = set(sql.pipelines) if sql is not None else set()
            yield from counter_families(broker.counters, pipelines=known)
        dropped = GaugeMetricFamily(
            "mycelial_metrics_series_dropped", "Subjects not exported because of the caps.", labels=["kind"]
        )
        dropped.add_metric(["daemon"], sql.daemons_dropped if sql else 0)
        dropped.add_metric(["pipeline"], sql.pipelines_dropped if sql else 0)
        yield dropped
        yield GaugeMetricFamily(
            "mycelial_metrics_scrape_duration_seconds",
            "Seconds this scrape took to read SQL and the broker.",
            value=time.perf_counter() - started,
        )

    def _read_sql(self, session: Session, now: datetime) -> SqlReadings:
        return read_sql(
            session,
            now=now,
            limits=self._limits.health,
            stale_after=self._limits.stale_after,
            max_daemons=self._limits.max_daemons,
            max_pipelines=self._limits.max_pipelines,
        )


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def daemon_families(sql: SqlReadings, now: datetime) -> Iterator[Metric]:
    status = _gauge(
        "mycelial_daemon_status", "1 for the daemon's status derived now, else 0.", ["daemon", "status"]
    )
    heartbeat = _gauge(
        "mycelial_daemon_heartbeat_age_seconds", "Seconds since the last heartbeat.", ["daemon"]
    )
    rtt = _gauge("mycelial_daemon_probe_rtt_seconds", "Round trip of the last answered probe.", ["daemon"])
    cpu = _gauge("mycelial_daemon_cpu_ratio", "CPU use from the last heartbeat (1 = one core).", ["daemon"])
    memory = _gauge("mycelial_daemon_memory_bytes", "Resident memory from the last heartbeat.", ["daemon"])
    running = _gauge("mycelial_daemon_running_runs", "Runs the last heartbeat reported running.", ["daemon"])
    desired = _gauge(
        "mycelial_daemon_config_desired_version", "Config version the daemon should run.", ["daemon"]
    )
    applied = _gauge(
        "mycelial_daemon_config_applied_version", "Config version the daemon applied.", ["daemon"]
    )
    for reading in sql.daemons:
        d, name = reading.daemon, [reading.daemon.name]
        for value in DAEMON_STATUSES:
            status.add_metric([d.name, value], 1.0 if reading.shown.status == value else 0.0)
        if d.last_heartbeat_at is not None:
            heartbeat.add_metric(name, max(0.0, (now - d.last_heartbeat_at).total_seconds()))
        if d.last_probe_rtt_ms is not None:
            rtt.add_metric(name, d.last_probe_rtt_ms / 1000.0)
        if d.cpu_percent is not None:
            cpu.add_metric(name, d.cpu_percent / 100.0)
        if d.memory_mb is not None:
            memory.add_metric(name, d.memory_mb * 2**20)
        running.add_metric(name, d.running_runs)
        if d.desired_config_version is not None:
            desired.add_metric(name, d.desired_config_version)
        if d.applied_config_version is not None:
            applied.add_metric(name, d.applied_config_version)
    yield from (status, heartbeat, rtt, cpu, memory, running, desired, applied)
    checker = GaugeMetricFamily(
        "mycelial_health_checker_age_seconds",
        "Seconds since a health check last ran (statuses are stale past the checker's limit).",
    )
    if sql.checker_ran_at is not None:
        checker.add_metric([], max(0.0, (now - sql.checker_ran_at).total_seconds()))
    yield checker


def pipeline_families(sql: SqlReadings) -> Iterator[Metric]:
    runs = _gauge(
        "mycelial_pipeline_runs", "Runs kept in the database (retention), by state.", ["pipeline", "state"]
    )
    for (pipeline, state), count in sorted(sql.runs_by_state.items()):
        runs.add_metric([pipeline, state], count)
    yield runs
    success = _gauge(
        "mycelial_pipeline_last_success_timestamp_seconds",
        "When the newest successful run finished (unix seconds).",
        ["pipeline"],
    )
    for pipeline, at in sorted(sql.last_success.items()):
        success.add_metric([pipeline], at.timestamp())
    yield success
    yield _histogram(
        "mycelial_pipeline_run_duration_seconds",
        "Durations of the finished runs kept (started to finished).",
        sql.durations,
    )
    yield _histogram(
        "mycelial_pipeline_schedule_delay_seconds",
        "Delay from a scheduled fire to its run's start, over the runs kept.",
        sql.schedule_delays,
    )


def _histogram(name: str, doc: str, per_pipeline: dict[str, Distribution]) -> Metric:
    family = GaugeHistogramMetricFamily(name, doc, labels=["pipeline"])
    for pipeline, dist in sorted(per_pipeline.items()):
        buckets = [(_le(b), float(n)) for b, n in zip(dist.buckets, dist.cumulative, strict=True)]
        buckets.append(("+Inf", float(dist.count)))
        family.add_metric([pipeline], buckets, gsum_value=dist.total)
    return family


def _le(bound: float) -> str:
    return repr(float(bound))


def alert_families(sql: SqlReadings) -> Iterator[Metric]:
    alerts = _gauge("mycelial_alerts", "Alerts by state (pending, firing, resolved).", ["state"])
    for state, count in sorted(sql.alerts_by_state.items()):
        alerts.add_metric([state], count)
    yield alerts


def queue_families(queues: dict[str, QueueReading], now: datetime) -> Iterator[Metric]:
    depth = _gauge("mycelial_daemon_queue_depth", "Messages waiting in the daemon's queue.", ["daemon"])
    oldest = _gauge(
        "mycelial_daemon_queue_oldest_message_age_seconds",
        "Age of the oldest waiting message (from its signed issue time); 0 when empty.",
        ["daemon"],
    )
    for name, reading in sorted(queues.items()):
        depth.add_metric([name], reading.depth)
        age = now.timestamp() - reading.oldest_issued_at if reading.oldest_issued_at is not None else 0.0
        oldest.add_metric([name], max(0.0, age))
    yield depth
    yield oldest


COUNTER_FAMILIES: dict[str, tuple[str, str, list[str]]] = {
    c.HANDLED: ("mycelial_cp_messages_handled", "Messages control-plane workers handled, by task.", ["task"]),
    c.REJECTED: (
        "mycelial_cp_messages_rejected",
        "Messages control-plane workers refused.",
        ["task", "kind"],
    ),
    c.EVENTS: ("mycelial_cp_events_recorded", "Daemon events the control plane recorded, by kind.", ["kind"]),
    c.RUNS_FINISHED: (
        "mycelial_pipeline_runs_finished",
        "Runs that reached a final state.",
        ["pipeline", "state"],
    ),
    c.ROWS_WRITTEN: ("mycelial_pipeline_rows_written", "Rows written by finished runs.", ["pipeline"]),
    c.DROPPED: ("mycelial_cp_counter_increments_dropped", "Counts lost to the counters' field cap.", []),
}
PIPELINE_COUNTERS = frozenset({c.RUNS_FINISHED, c.ROWS_WRITTEN})


def counter_families(
    values: list[tuple[str, tuple[str, ...], int]], *, pipelines: set[str]
) -> Iterator[Metric]:
    families = {
        metric: CounterMetricFamily(name, doc, labels=labels)
        for metric, (name, doc, labels) in COUNTER_FAMILIES.items()
    }
    for metric, labels, value in sorted(values):
        family = families.get(metric)
        if family is None or len(labels) != len(COUNTER_FAMILIES[metric][2]):
            continue
        if metric in PIPELINE_COUNTERS and labels[0] not in pipelines:
            continue  # a removed pipeline, or one past the cap
        family.add_metric(list(labels), value)
    yield from families.values()
