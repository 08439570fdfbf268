"""Which alert conditions hold, per rule kind, from facts alone; and inhibition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cp.alerts.conditions import DaemonFacts, Facts, PipelineFacts, holding_conditions
from cp.alerts.rules import RuleDecl
from cp.models import DaemonStatus, RunState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OK, FAILED = RunState.SUCCEEDED, RunState.FAILED


def rule(kind: str, **fields: Any) -> RuleDecl:
    return RuleDecl.model_validate({"name": f"{kind}-rule", "kind": kind, **fields})


def daemon(name: str = "edge-1", **facts: Any) -> DaemonFacts:
    return DaemonFacts(
        name=name,
        labels=facts.pop("labels", {"site": "berlin"}),
        status=facts.pop("status", DaemonStatus.ONLINE),
        **facts,
    )


def pipeline(name: str = "orders", **facts: Any) -> PipelineFacts:
    return PipelineFacts(name=name, daemon=facts.pop("daemon", "edge-1"), **facts)


def subjects(rules: list[RuleDecl], facts: Facts) -> list[str]:
    return [c.subject for c in holding_conditions(rules, facts, now=NOW)]


def test_an_offline_daemon_holds_daemon_offline_with_its_labels() -> None:
    facts = Facts(
        daemons=[daemon(status=DaemonStatus.OFFLINE, status_reason="no heartbeat for 20s"), daemon("edge-2")]
    )

    [condition] = holding_conditions([rule("daemon_offline", **{"for": "30s"})], facts, now=NOW)

    assert condition.subject == "daemon:edge-1"
    assert condition.hold_for == 30
    assert condition.labels == {"site": "berlin", "daemon": "edge-1"}
    assert "no heartbeat for 20s" in condition.summary


def test_a_declared_daemon_never_heard_from_is_unknown_not_offline() -> None:
    facts = Facts(daemons=[daemon(status=DaemonStatus.UNKNOWN, status_reason="never heard from")])

    assert subjects([rule("daemon_offline")], facts) == []


def test_a_degraded_daemon_holds_daemon_degraded_only() -> None:
    facts = Facts(daemons=[daemon(status=DaemonStatus.DEGRADED)])

    assert subjects([rule("daemon_degraded")], facts) == ["daemon:edge-1"]
    assert subjects([rule("daemon_offline")], facts) == []


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param({"names": ["edge-2"]}, ["daemon:edge-2"], id="by-name"),
        pytest.param({"labels": {"site": "paris"}}, ["daemon:edge-3"], id="by-labels"),
        pytest.param(
            {"names": ["edge-1", "edge-3"], "labels": {"site": "paris"}}, ["daemon:edge-3"], id="both"
        ),
        pytest.param(None, ["daemon:edge-1", "daemon:edge-2", "daemon:edge-3"], id="all"),
    ],
)
def test_a_rule_selects_daemons_by_name_and_labels(
    selector: dict[str, Any] | None, expected: list[str]
) -> None:
    offline = DaemonStatus.OFFLINE
    facts = Facts(
        daemons=[
            daemon("edge-1", status=offline),
            daemon("edge-2", status=offline),
            daemon("edge-3", status=offline, labels={"site": "paris"}),
        ]
    )
    fields = {"daemons": selector} if selector is not None else {}

    assert subjects([rule("daemon_offline", **fields)], facts) == expected


@pytest.mark.parametrize(
    ("outcomes", "holds"),
    [
        pytest.param((FAILED, FAILED, FAILED), True, id="three-failures"),
        pytest.param((FAILED, FAILED, FAILED, OK), True, id="three-after-a-success"),
        pytest.param((FAILED, FAILED), False, id="only-two-runs"),
        pytest.param((FAILED, OK, FAILED, FAILED), False, id="a-success-between"),
        pytest.param((RunState.TIMED_OUT, RunState.LOST, FAILED), True, id="timeouts-and-losses-count"),
    ],
)
def test_run_failures_needs_n_consecutive_failed_runs(outcomes: tuple[RunState, ...], holds: bool) -> None:
    facts = Facts(pipelines=[pipeline(recent_outcomes=outcomes)])

    assert subjects([rule("run_failures", threshold={"count": 3})], facts) == (
        ["pipeline:orders"] if holds else []
    )


@given(st.lists(st.sampled_from([OK, FAILED, RunState.TIMED_OUT]), max_size=8), st.integers(1, 5))
def test_run_failures_holds_exactly_when_the_newest_n_all_failed(
    outcomes: list[RunState], count: int
) -> None:
    facts = Facts(pipelines=[pipeline(recent_outcomes=tuple(outcomes))])
    expected = len(outcomes) >= count and OK not in outcomes[:count]

    assert bool(subjects([rule("run_failures", threshold={"count": count})], facts)) is expected


def test_run_duration_holds_for_a_run_longer_than_the_limit() -> None:
    slow = rule("run_duration", threshold={"longer_than": "10m"})

    assert subjects([slow], Facts(pipelines=[pipeline(longest_running=601.0)])) == ["pipeline:orders"]
    assert subjects([slow], Facts(pipelines=[pipeline(longest_running=599.0)])) == []
    assert subjects([slow], Facts(pipelines=[pipeline()])) == []


def test_freshness_counts_from_the_last_success_or_the_schedule_start() -> None:
    fresh = rule("freshness", threshold={"within": "1h"})
    hour = timedelta(hours=1, seconds=1)

    assert subjects([fresh], Facts(pipelines=[pipeline(last_success_at=NOW - hour)])) == ["pipeline:orders"]
    assert subjects([fresh], Facts(pipelines=[pipeline(last_success_at=NOW - timedelta(minutes=5))])) == []
    assert subjects([fresh], Facts(pipelines=[pipeline(since=NOW - hour)])) == ["pipeline:orders"]
    assert subjects([fresh], Facts(pipelines=[pipeline(since=NOW - hour, enabled=False)])) == []


def test_queue_backlog_holds_on_depth_or_on_the_oldest_message_age() -> None:
    by_depth = rule("queue_backlog", threshold={"depth": 1000})
    by_age = rule("queue_backlog", threshold={"oldest_age": "5m"})

    assert subjects([by_depth], Facts(daemons=[daemon(queue_depth=1001)])) == ["daemon:edge-1"]
    assert subjects([by_depth], Facts(daemons=[daemon(queue_depth=1000)])) == []
    assert subjects([by_age], Facts(daemons=[daemon(oldest_age=301.0)])) == ["daemon:edge-1"]
    assert subjects([by_age], Facts(daemons=[daemon(oldest_age=None, queue_depth=5000)])) == []


def test_config_drift_holds_while_desired_differs_from_applied_and_waits_its_limit() -> None:
    drift = rule("config_drift", threshold={"longer_than": "5m"}, **{"for": "1m"})

    [condition] = holding_conditions(
        [drift], Facts(daemons=[daemon(desired_version=4, applied_version=3)]), now=NOW
    )
    assert condition.hold_for == 300
    assert subjects([drift], Facts(daemons=[daemon(desired_version=4, applied_version=4)])) == []
    assert subjects([drift], Facts(daemons=[daemon(desired_version=None, applied_version=None)])) == []


def test_an_offline_daemon_inhibits_its_pipelines_failure_and_freshness_alerts() -> None:
    facts = Facts(
        daemons=[daemon("edge-1", status=DaemonStatus.OFFLINE), daemon("edge-2")],
        pipelines=[
            pipeline("orders", daemon="edge-1", recent_outcomes=(FAILED,), since=NOW - timedelta(days=1)),
            pipeline("stock", daemon="edge-2", recent_outcomes=(FAILED,), since=NOW - timedelta(days=1)),
        ],
    )
    rules = [rule("run_failures", threshold={"count": 1}), rule("freshness", threshold={"within": "1h"})]

    inhibited = {(c.rule, c.subject): c.inhibited_by for c in holding_conditions(rules, facts, now=NOW)}

    assert inhibited == {
        ("run_failures-rule", "pipeline:orders"): "daemon:edge-1 offline",
        ("freshness-rule", "pipeline:orders"): "daemon:edge-1 offline",
        ("run_failures-rule", "pipeline:stock"): None,
        ("freshness-rule", "pipeline:stock"): None,
    }
