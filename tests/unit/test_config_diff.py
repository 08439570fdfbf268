"""Specification of the human-readable diff between two normalized documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cp.config_diff import diff_documents

Normalize = Callable[[dict[str, Any]], dict[str, Any]]


def test_against_no_previous_version_everything_is_added(
    raw_config: dict[str, Any], normalized: Normalize
) -> None:
    assert diff_documents(None, normalized(raw_config)) == [
        "+ daemon edge-berlin-1",
        "+ daemon edge-berlin-2",
        "+ daemon edge-paris",
        "+ connector shop",
        "+ connector warehouse",
        "+ pipeline orders",
        "+ pipeline stock",
    ]


def test_identical_documents_have_no_diff(raw_config: dict[str, Any], normalized: Normalize) -> None:
    assert diff_documents(normalized(raw_config), normalized(raw_config)) == []


def test_removed_and_added_items_get_minus_and_plus_lines(
    raw_config: dict[str, Any], normalized: Normalize
) -> None:
    old = normalized(raw_config)
    raw_config["pipelines"][1]["name"] = "inventory"

    assert diff_documents(old, normalized(raw_config)) == ["- pipeline stock", "+ pipeline inventory"]


def test_a_changed_field_shows_its_old_and_new_value(
    raw_config: dict[str, Any], normalized: Normalize
) -> None:
    old = normalized(raw_config)
    raw_config["pipelines"][0]["schedule"] = "30 2 * * *"
    raw_config["pipelines"][0]["batch_size"] = 500

    assert diff_documents(old, normalized(raw_config)) == [
        "~ pipeline orders: batch_size 10000 -> 500; schedule '0 * * * *' -> '30 2 * * *'"
    ]


def test_a_nested_change_is_named_by_its_dotted_path(
    raw_config: dict[str, Any], normalized: Normalize
) -> None:
    old = normalized(raw_config)
    raw_config["pipelines"][0]["destination"]["table"] = "orders_v2"
    raw_config["connectors"][0]["path"] = "/srv/shop.db"

    assert diff_documents(old, normalized(raw_config)) == [
        "~ connector shop: options.path '/data/shop.db' -> '/srv/shop.db'",
        "~ pipeline orders: destination.table 'orders' -> 'orders_v2'",
    ]


def test_labels_are_shown_whole_and_a_missing_value_as_unset(
    raw_config: dict[str, Any], normalized: Normalize
) -> None:
    old = normalized(raw_config)
    raw_config["daemons"][2]["labels"] = {"site": "paris", "tier": "edge"}
    del raw_config["pipelines"][0]["schedule"]

    assert diff_documents(old, normalized(raw_config)) == [
        "~ daemon edge-paris: labels {'site': 'paris'} -> {'site': 'paris', 'tier': 'edge'}",
        "~ pipeline orders: schedule '0 * * * *' -> unset",
    ]
