"""Alert rules and notifiers in the configuration: validated at apply, one line per problem."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from cp.config_diff import diff_documents
from cp.config_file import ConfigError, parse_config_text

SOURCE = "mycelial.yaml"


def with_alerts(raw: dict[str, Any], *rules: dict[str, Any], **settings: Any) -> dict[str, Any]:
    raw["notifiers"] = [
        {"name": "ops-hook", "kind": "webhook", "url": "https://example/hook", "secret": "${env:HOOK_SECRET}"}
    ]
    raw["alerts"] = {"rules": list(rules)}
    if settings:
        raw["alerts"]["settings"] = settings
    return raw


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    return parse_config_text(yaml.safe_dump(raw, sort_keys=False), source=SOURCE)


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return caught.value.problems


OFFLINE = {"name": "edge-offline", "kind": "daemon_offline", "for": "30s", "notify": ["ops-hook"]}


def test_rules_are_normalized_with_seconds_and_alertmanager_defaults(raw_config: dict[str, Any]) -> None:
    fails = {
        "name": "fails",
        "kind": "run_failures",
        "threshold": {"count": 3},
        "pipelines": {"names": ["orders"]},
    }
    document = validate(with_alerts(raw_config, fails, OFFLINE))

    assert document["alerts"]["settings"] == {
        "group_wait": 30.0,
        "group_interval": 300.0,
        "repeat_interval": 14400.0,
        "group_by": ["rule"],
    }
    assert [r["name"] for r in document["alerts"]["rules"]] == ["edge-offline", "fails"]
    assert document["alerts"]["rules"][0] == {
        "name": "edge-offline",
        "kind": "daemon_offline",
        "for": 30.0,
        "severity": "warning",
        "notify": ["ops-hook"],
    }
    assert document["notifiers"][0]["name"] == "ops-hook"


def test_a_document_without_alerts_keeps_its_old_shape(raw_config: dict[str, Any]) -> None:
    document = validate(raw_config)

    assert "alerts" not in document and "notifiers" not in document


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        pytest.param(
            {**OFFLINE, "notify": ["pager"]},
            "alerts.rules[0].notify[0]: unknown notifier 'pager' (declare it under notifiers)",
            id="unknown-notifier",
        ),
        pytest.param(
            {**OFFLINE, "for": "5 parsecs"},
            "alerts.rules[0].for: expected a duration like 30s, 5m, 4h or 1d, got '5 parsecs'",
            id="bad-duration",
        ),
        pytest.param(
            {**OFFLINE, "for": "-5s"}, "alerts.rules[0].for: expected a duration", id="negative-duration"
        ),
        pytest.param(
            {**OFFLINE, "kind": "disk_full"}, "alerts.rules[0].kind: unknown value 'disk_full'", id="kind"
        ),
        pytest.param(
            {"name": "slow", "kind": "run_duration"},
            "alerts.rules[0]: a run_duration rule needs threshold.longer_than",
            id="missing-threshold",
        ),
        pytest.param(
            {"name": "backlog", "kind": "queue_backlog", "threshold": {}},
            "alerts.rules[0]: a queue_backlog rule needs threshold.depth or threshold.oldest_age",
            id="empty-threshold",
        ),
        pytest.param(
            {"name": "fresh", "kind": "freshness", "threshold": {"within": "1h", "count": 2}},
            "alerts.rules[0]: threshold.count does not apply to a freshness rule",
            id="threshold-of-another-kind",
        ),
        pytest.param(
            {**OFFLINE, "pipelines": {"names": ["orders"]}},
            "alerts.rules[0]: a daemon_offline rule selects daemons, not pipelines",
            id="wrong-selector",
        ),
        pytest.param(
            {**OFFLINE, "daemons": {"names": ["edge-mars"]}},
            "alerts.rules[0].daemons.names[0]: unknown daemon 'edge-mars'",
            id="unknown-daemon",
        ),
        pytest.param(
            {
                "name": "fails",
                "kind": "run_failures",
                "threshold": {"count": 3},
                "pipelines": {"names": ["nope"]},
            },
            "alerts.rules[0].pipelines.names[0]: unknown pipeline 'nope'",
            id="unknown-pipeline",
        ),
        pytest.param({**OFFLINE, "severity": "panic"}, "alerts.rules[0].severity:", id="severity"),
        pytest.param(
            {**OFFLINE, "flavour": "x"}, "alerts.rules[0].flavour: unknown field", id="unknown-field"
        ),
    ],
)
def test_a_bad_rule_is_refused_with_one_line_naming_its_path(
    raw_config: dict[str, Any], rule: dict[str, Any], problem: str
) -> None:
    problems = problems_of(with_alerts(raw_config, rule))

    assert len(problems) == 1
    assert problems[0].startswith(f"{SOURCE}: {problem}")


def test_two_rules_of_one_name_are_refused(raw_config: dict[str, Any]) -> None:
    assert problems_of(with_alerts(raw_config, OFFLINE, OFFLINE)) == [
        f"{SOURCE}: alerts.rules[1].name: duplicate rule name 'edge-offline'"
    ]


def test_bad_settings_are_refused(raw_config: dict[str, Any]) -> None:
    problems = problems_of(with_alerts(raw_config, OFFLINE, group_wait="soon"))

    assert problems == [
        f"{SOURCE}: alerts.settings.group_wait: expected a duration like 30s, 5m, 4h or 1d, got 'soon'"
    ]


def test_the_diff_names_added_and_changed_rules(raw_config: dict[str, Any]) -> None:
    before = validate(raw_config)
    after = validate(with_alerts(raw_config, OFFLINE, group_wait="1m"))
    changed = validate(with_alerts(raw_config, {**OFFLINE, "for": "1m"}, group_wait="2m"))

    assert "+ alert rule edge-offline" in diff_documents(before, after)
    assert "+ notifier ops-hook" in diff_documents(before, after)
    assert diff_documents(after, changed) == [
        "~ alert rule edge-offline: for 30.0 -> 60.0",
        "~ alert settings: group_wait 60.0 -> 120.0",
    ]
