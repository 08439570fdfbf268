"""Specification of configuration validation: normalized documents and one-line problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cp.config_file import ConfigError, checksum, load_config_file, parse_config_text

SOURCE = "mycelial.yaml"
DELETE = object()


def validate(raw: Any) -> dict[str, Any]:
    return parse_config_text(yaml.safe_dump(raw, sort_keys=False), source=SOURCE)


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return caught.value.problems


def edit(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with DELETE remove) the item at a dotted path such as ``pipelines.0.schedule``."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = raw
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


def test_a_valid_document_is_sorted_by_name_with_defaults_filled_in(raw_config: dict[str, Any]) -> None:
    raw_config["daemons"].reverse()
    raw_config["connectors"].reverse()
    raw_config["pipelines"].reverse()

    document = validate(raw_config)

    assert [d["name"] for d in document["daemons"]] == ["edge-berlin-1", "edge-berlin-2", "edge-paris"]
    assert [c["name"] for c in document["connectors"]] == ["shop", "warehouse"]
    assert [p["name"] for p in document["pipelines"]] == ["orders", "stock"]
    assert document["connectors"][0] == {
        "name": "shop",
        "kind": "sqlite",
        "options": {"path": "/data/shop.db"},
    }
    assert document["pipelines"][0] == {
        "name": "orders",
        "source": {"connector": "shop", "table": "orders", "query": None},
        "destination": {"connector": "warehouse", "table": "orders", "query": None},
        "mode": "replace",
        "batch_size": 10_000,
        "cursor_column": None,
        "key_columns": [],
        "schema_drift": "add",
        "schedule": "0 * * * *",
        "timezone": "UTC",
        "daemon": "edge-paris",
        "labels": None,
        "enabled": True,
        "catchup": "latest",
        "max_catchup": 10,
        "overlap": "skip",
        "max_active_runs": 1,
        "retries": {"max_attempts": 3, "backoff": 10.0, "max_backoff": 600.0},
        "timeout": None,
    }


def test_a_daemon_without_labels_gets_an_empty_label_set(raw_config: dict[str, Any]) -> None:
    del raw_config["daemons"][2]["labels"]
    raw_config["pipelines"][0]["daemon"] = "edge-paris"

    assert validate(raw_config)["daemons"][2] == {"name": "edge-paris", "labels": {}}


def test_an_empty_file_is_an_empty_configuration_when_removing_everything_is_allowed() -> None:
    document = parse_config_text("", source=SOURCE, allow_empty=True)

    assert document == {"daemons": [], "connectors": [], "pipelines": []}


def test_well_formed_secret_references_are_accepted_and_kept_as_references(
    raw_config: dict[str, Any],
) -> None:
    raw_config["connectors"][0] = {"name": "shop", "kind": "postgres", "dsn": "${env:SHOP_DSN}"}
    raw_config["connectors"][1] = {
        "name": "warehouse",
        "kind": "mysql",
        "database": "dw",
        "password": "${file:/run/secrets/warehouse}",
    }

    options = [c["options"] for c in validate(raw_config)["connectors"]]

    assert options == [
        {"dsn": "${env:SHOP_DSN}"},
        {"database": "dw", "password": "${file:/run/secrets/warehouse}"},
    ]


BAD_INPUTS = [
    pytest.param(
        "pipelines.0.schedule",
        "61 * * * *",
        'pipelines[0].schedule: invalid cron "61 * * * *"',
        id="cron-minute-out-of-range",
    ),
    pytest.param(
        "pipelines.1.schedule",
        "every hour",
        'pipelines[1].schedule: invalid cron "every hour"',
        id="cron-not-an-expression",
    ),
    pytest.param(
        "pipelines.0.colour", "red", "pipelines[0].colour: unknown field", id="unknown-pipeline-field"
    ),
    pytest.param(
        "pipelines.0.source.where",
        "1=1",
        "pipelines[0].source.where: unknown field",
        id="unknown-endpoint-field",
    ),
    pytest.param("daemons.0.region", "eu", "daemons[0].region: unknown field", id="unknown-daemon-field"),
    pytest.param(
        "connectors.0.colour", "red", "connectors[0].colour: unknown field", id="unknown-connector-option"
    ),
    pytest.param(
        "connectors.0.path", DELETE, "connectors[0].path: Field required", id="missing-connector-option"
    ),
    pytest.param(
        "pipelines.1.name",
        "orders",
        "pipelines[1].name: duplicate name 'orders'",
        id="duplicate-pipeline",
    ),
    pytest.param(
        "daemons.1.name",
        "edge-berlin-1",
        "daemons[1].name: duplicate name 'edge-berlin-1'",
        id="duplicate-daemon",
    ),
    pytest.param(
        "pipelines.0.name",
        "hourly orders",
        "pipelines[0].name: invalid name 'hourly orders' (letters, digits, '_', '.', '-'; at most 63)",
        id="name-with-space",
    ),
    pytest.param(
        "pipelines.0.destination.connector",
        "lake",
        "pipelines[0].destination.connector: unknown connector 'lake'",
        id="unknown-connector-reference",
    ),
    pytest.param(
        "connectors.1.kind",
        "oracle",
        "connectors[1].kind: unknown connector kind 'oracle' (known: csv, jsonl, mysql, postgres, sqlite)",
        id="unknown-connector-kind",
    ),
    pytest.param(
        "pipelines.0.timezone",
        "Europe/Atlantis",
        "pipelines[0].timezone: unknown time zone 'Europe/Atlantis'",
        id="unknown-timezone",
    ),
    pytest.param(
        "pipelines.0.timezone",
        "../etc/passwd",
        "pipelines[0].timezone: unknown time zone '../etc/passwd'",
        id="timezone-path-trick",
    ),
    pytest.param(
        "pipelines.0.labels",
        {"site": "paris"},
        "pipelines[0]: give exactly one of daemon or labels for placement",
        id="both-daemon-and-labels",
    ),
    pytest.param(
        "pipelines.0.daemon",
        DELETE,
        "pipelines[0]: give exactly one of daemon or labels for placement",
        id="neither-daemon-nor-labels",
    ),
    pytest.param(
        "pipelines.0.daemon",
        "edge-tokyo",
        "pipelines[0].daemon: unknown daemon 'edge-tokyo' (declare it under daemons)",
        id="unknown-daemon",
    ),
    pytest.param(
        "pipelines.1.labels",
        {"site": "tokyo"},
        "pipelines[1].labels: no declared daemon matches {'site': 'tokyo'}",
        id="selector-matches-no-daemon",
    ),
    pytest.param(
        "pipelines.0.source.query",
        "SELECT 1",
        "pipelines[0].source: give exactly one of table or query",
        id="source-with-table-and-query",
    ),
    pytest.param(
        "pipelines.0.source.table",
        DELETE,
        "pipelines[0].source: give exactly one of table or query",
        id="source-with-neither-table-nor-query",
    ),
    pytest.param(
        "pipelines.0.destination.table",
        DELETE,
        "pipelines[0].destination.table: required",
        id="destination-without-table",
    ),
    pytest.param(
        "connectors.0.path",
        "${vault:shop}",
        "connectors[0].path: invalid reference ${vault:shop} (use ${env:NAME} or ${file:/path})",
        id="secret-reference-of-unknown-kind",
    ),
    pytest.param(
        "connectors.0.path",
        "/data/${env:}/shop.db",
        "connectors[0].path: invalid reference ${env:} (use ${env:NAME} or ${file:/path})",
        id="secret-reference-without-name",
    ),
    pytest.param(
        "pipelines.0.mode",
        "merge",
        "pipelines[0].mode: Input should be 'replace', 'append', 'incremental' or 'upsert'",
        id="unknown-mode",
    ),
    pytest.param(
        "pipelines.0.batch_size",
        0,
        "pipelines[0].batch_size: Input should be greater than or equal to 1",
        id="zero-batch-size",
    ),
    pytest.param("extras", [], "extras: unknown field", id="unknown-top-level-section"),
]


@pytest.mark.parametrize(("path", "value", "problem"), BAD_INPUTS)
def test_each_bad_input_is_one_line_naming_the_file_and_the_path_inside_it(
    raw_config: dict[str, Any], path: str, value: Any, problem: str
) -> None:
    assert problems_of(edit(raw_config, path, value)) == [f"{SOURCE}: {problem}"]


def test_a_bad_cron_expression_names_the_pipeline_path(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][0]["schedule"] = "61 * * * *"

    with pytest.raises(ConfigError) as caught:
        validate(raw_config)

    assert str(caught.value) == 'mycelial.yaml: pipelines[0].schedule: invalid cron "61 * * * *"'


def test_a_cron_expression_that_never_fires_is_rejected(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][0]["schedule"] = "0 0 31 2 *"

    problems = problems_of(raw_config)

    assert len(problems) == 1
    assert problems[0].startswith(f"{SOURCE}: pipelines[0].schedule: ")


def test_every_problem_in_a_document_is_reported_together(raw_config: dict[str, Any]) -> None:
    raw_config["daemons"][1]["name"] = "edge-berlin-1"
    raw_config["pipelines"][0]["schedule"] = "61 * * * *"
    raw_config["pipelines"][1]["source"]["connector"] = "crm"
    raw_config["pipelines"][1]["timezone"] = "Mars/Olympus"

    assert problems_of(raw_config) == [
        "mycelial.yaml: daemons[1].name: duplicate name 'edge-berlin-1'",
        'mycelial.yaml: pipelines[0].schedule: invalid cron "61 * * * *"',
        "mycelial.yaml: pipelines[1].source.connector: unknown connector 'crm'",
        "mycelial.yaml: pipelines[1].timezone: unknown time zone 'Mars/Olympus'",
    ]


def test_every_shape_problem_in_a_document_is_reported_together(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][0]["colour"] = "red"
    raw_config["pipelines"][1]["batch_size"] = -5
    raw_config["daemons"][0]["region"] = "eu"

    problems = problems_of(raw_config)

    assert sorted(problems) == [
        "mycelial.yaml: daemons[0].region: unknown field",
        "mycelial.yaml: pipelines[0].colour: unknown field",
        "mycelial.yaml: pipelines[1].batch_size: Input should be greater than or equal to 1",
    ]
    assert all("\n" not in p for p in problems)


def test_invalid_yaml_names_the_line_and_column() -> None:
    text = "daemons:\n  - name: edge-1\npipelines: [orders\nconnectors: []\n"

    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, source=SOURCE)

    assert caught.value.problems == [
        "mycelial.yaml: invalid YAML at line 4, column 11: did not find expected ',' or ']'"
    ]


@pytest.mark.parametrize("text", ["- daemons\n- pipelines\n", "just a string\n", "42\n"])
def test_a_top_level_that_is_not_a_mapping_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, source=SOURCE)

    assert caught.value.problems == [
        "mycelial.yaml: top level must be a mapping with daemons, connectors, pipelines"
    ]


def test_a_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config_file(path)

    assert caught.value.problems == [f"{path}: cannot read file: No such file or directory"]


def test_a_directory_given_as_the_file_is_reported_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_file(tmp_path)

    assert caught.value.problems == [f"{tmp_path}: cannot read file: Is a directory"]


def test_problems_in_a_file_are_prefixed_with_its_path(tmp_path: Path, raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][0]["timezone"] = "Nowhere/Special"
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(raw_config), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config_file(path)

    assert caught.value.problems == [f"{path}: pipelines[0].timezone: unknown time zone 'Nowhere/Special'"]


def test_a_valid_file_loads_to_the_same_document_as_its_text(
    tmp_path: Path, raw_config: dict[str, Any]
) -> None:
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(raw_config), encoding="utf-8")

    assert load_config_file(path) == validate(raw_config)


def test_the_checksum_does_not_depend_on_key_or_item_order(raw_config: dict[str, Any]) -> None:
    shuffled = {
        "pipelines": [dict(reversed(list(p.items()))) for p in reversed(raw_config["pipelines"])],
        "connectors": [dict(reversed(list(c.items()))) for c in reversed(raw_config["connectors"])],
        "daemons": list(reversed(raw_config["daemons"])),
    }

    assert checksum(validate(shuffled)) == checksum(validate(raw_config))


def test_the_checksum_changes_when_any_value_changes(raw_config: dict[str, Any]) -> None:
    before = checksum(validate(raw_config))
    raw_config["pipelines"][1]["batch_size"] = 500

    assert checksum(validate(raw_config)) != before


def test_the_checksum_of_equal_mappings_is_equal_whatever_their_key_order() -> None:
    assert checksum({"a": 1, "b": [1, {"x": 1, "y": 2}]}) == checksum({"b": [1, {"y": 2, "x": 1}], "a": 1})
