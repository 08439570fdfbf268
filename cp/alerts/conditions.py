"""Which rule × subject conditions hold now, from facts gathered beforehand. Pure.

Each rule kind reads a few facts of a daemon or a pipeline; a pipeline whose daemon is offline
has its run_failures, run_duration and freshness conditions inhibited (they still hold, but
send nothing): the daemon's own alert explains them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from cp.alerts.rules import DAEMON_KINDS, RuleDecl, RuleKind
from cp.config_file import matches_selector
from cp.durations import format_duration
from cp.models import DaemonStatus, RunState

FAILED_STATES = frozenset({RunState.FAILED, RunState.TIMED_OUT, RunState.LOST})
SUMMARY_MAX = 500
# only a daemon that was heard from and went silent: one declared and never heard from is
# ``unknown`` (cp/health.py), as in every view; alerting on it would page for every new daemon
UNREACHABLE = frozenset({DaemonStatus.OFFLINE})


@dataclass(frozen=True)
class DaemonFacts:
    name: str
    labels: dict[str, str]
    status: DaemonStatus  # derived now (cp/shown_status.py), not the stored column
    status_reason: str = ""
    queue_depth: int | None = None
    oldest_age: float | None = None  # seconds the oldest message of its queue has waited
    desired_version: int | None = None
    applied_version: int | None = None


@dataclass(frozen=True)
class PipelineFacts:
    name: str
    daemon: str | None  # pinned daemon, else the daemon of its newest run
    recent_outcomes: tuple[RunState, ...] = ()  # newest first: failed/succeeded runs only
    longest_running: float | None = None  # seconds the oldest running run has been running
    last_success_at: datetime | None = None
    since: datetime | None = None  # the pipeline's schedule start: freshness counts from here
    enabled: bool = True


@dataclass(frozen=True)
class Facts:
    daemons: list[DaemonFacts] = field(default_factory=list)
    pipelines: list[PipelineFacts] = field(default_factory=list)


@dataclass(frozen=True)
class Condition:
    """A rule's condition that holds for one subject now."""

    rule: str
    subject: str
    subject_kind: str
    severity: str
    summary: str
    labels: dict[str, str]
    hold_for: float  # seconds it must hold before the alert fires
    notify: tuple[str, ...] = ()
    inhibited_by: str | None = None


def holding_conditions(rules: Iterable[RuleDecl], facts: Facts, *, now: datetime) -> list[Condition]:
    """Every condition that holds now, inhibited where an offline daemon explains it."""
    offline = {d.name for d in facts.daemons if d.status in UNREACHABLE}
    found: list[Condition] = []
    for rule in rules:
        if rule.kind in DAEMON_KINDS:
            found += _daemon_conditions(rule, facts.daemons)
        else:
            found += _pipeline_conditions(rule, facts.pipelines, offline=offline, now=now)
    return found


def _selected_daemons(rule: RuleDecl, daemons: list[DaemonFacts]) -> Iterator[DaemonFacts]:
    names = set(rule.daemons.names) if rule.daemons and rule.daemons.names is not None else None
    labels = rule.daemons.labels if rule.daemons else None
    for daemon in daemons:
        if names is not None and daemon.name not in names:
            continue
        if labels is not None and not matches_selector(daemon.labels, labels):
            continue
        yield daemon


def _daemon_conditions(rule: RuleDecl, daemons: list[DaemonFacts]) -> Iterator[Condition]:
    threshold = rule.threshold
    for daemon in _selected_daemons(rule, daemons):
        summary: str | None = None
        hold_for = rule.for_
        if rule.kind is RuleKind.DAEMON_OFFLINE and daemon.status in UNREACHABLE:
            summary = f"daemon {daemon.name} offline: {daemon.status_reason}"
        elif rule.kind is RuleKind.DAEMON_DEGRADED and daemon.status is DaemonStatus.DEGRADED:
            summary = f"daemon {daemon.name} degraded: {daemon.status_reason}"
        elif rule.kind is RuleKind.QUEUE_BACKLOG and threshold is not None:
            summary = _backlog(daemon, depth=threshold.depth, oldest_age=threshold.oldest_age)
        elif (
            rule.kind is RuleKind.CONFIG_DRIFT and threshold is not None and threshold.longer_than is not None
        ):
            if daemon.desired_version is not None and daemon.desired_version != daemon.applied_version:
                summary = (
                    f"daemon {daemon.name} runs config version {daemon.applied_version or 'none'}, "
                    f"desired {daemon.desired_version}"
                )
                hold_for = max(hold_for, threshold.longer_than)
        if summary is not None:
            yield Condition(
                rule=rule.name,
                subject=f"daemon:{daemon.name}",
                subject_kind="daemon",
                severity=rule.severity,
                summary=(rule.summary or summary)[:SUMMARY_MAX],
                labels={**daemon.labels, "daemon": daemon.name},
                hold_for=hold_for,
                notify=tuple(rule.notify),
            )


def _backlog(daemon: DaemonFacts, *, depth: int | None, oldest_age: float | None) -> str | None:
    over: list[str] = []
    if depth is not None and daemon.queue_depth is not None and daemon.queue_depth > depth:
        over.append(f"{daemon.queue_depth} messages waiting (over {depth})")
    if oldest_age is not None and daemon.oldest_age is not None and daemon.oldest_age > oldest_age:
        over.append(f"oldest message waiting {format_duration(round(daemon.oldest_age))}")
    return f"daemon {daemon.name} queue backlog: {', '.join(over)}" if over else None


def _pipeline_conditions(
    rule: RuleDecl, pipelines: list[PipelineFacts], *, offline: set[str], now: datetime
) -> Iterator[Condition]:
    names = set(rule.pipelines.names) if rule.pipelines and rule.pipelines.names is not None else None
    threshold = rule.threshold
    assert threshold is not None  # RuleDecl requires one for every pipeline kind
    for pipeline in pipelines:
        if names is not None and pipeline.name not in names:
            continue
        summary: str | None = None
        if rule.kind is RuleKind.RUN_FAILURES and threshold.count is not None:
            last = pipeline.recent_outcomes[: threshold.count]
            if len(last) == threshold.count and all(s in FAILED_STATES for s in last):
                summary = f"pipeline {pipeline.name}: its last {threshold.count} runs failed"
        elif rule.kind is RuleKind.RUN_DURATION and threshold.longer_than is not None:
            running = pipeline.longest_running
            if running is not None and running > threshold.longer_than:
                summary = (
                    f"pipeline {pipeline.name}: a run has been running for {format_duration(round(running))} "
                    f"(limit {format_duration(threshold.longer_than)})"
                )
        elif rule.kind is RuleKind.FRESHNESS and threshold.within is not None and pipeline.enabled:
            summary = _stale(pipeline, within=threshold.within, now=now)
        if summary is None:
            continue
        labels = {"pipeline": pipeline.name}
        if pipeline.daemon is not None:
            labels["daemon"] = pipeline.daemon
        yield Condition(
            rule=rule.name,
            subject=f"pipeline:{pipeline.name}",
            subject_kind="pipeline",
            severity=rule.severity,
            summary=(rule.summary or summary)[:SUMMARY_MAX],
            labels=labels,
            hold_for=rule.for_,
            notify=tuple(rule.notify),
            inhibited_by=f"daemon:{pipeline.daemon} offline" if pipeline.daemon in offline else None,
        )


def _stale(pipeline: PipelineFacts, *, within: float, now: datetime) -> str | None:
    reference = pipeline.last_success_at or pipeline.since
    if reference is None or (now - reference).total_seconds() <= within:
        return None
    if pipeline.last_success_at is None:
        return f"pipeline {pipeline.name}: no successful run yet (limit {format_duration(within)})"
    age = round((now - pipeline.last_success_at).total_seconds())
    return (
        f"pipeline {pipeline.name}: last success {format_duration(age)} ago (limit {format_duration(within)})"
    )
