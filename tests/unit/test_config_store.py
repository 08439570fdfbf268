"""Specification of applying a configuration: versions, table sync and per-daemon desired state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import Session, select

from cp.config_store import ApplyResult, current_push, desired_state, plan_diff
from cp.models import ConfigVersion, Connector, Daemon, Pipeline

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
T1 = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)

Apply = Callable[..., ApplyResult]


def pipelines_of(result: ApplyResult) -> dict[str, list[str]]:
    return {push.daemon: [p.name for p in push.state.pipelines] for push in result.pushes}


def test_the_first_apply_stores_version_one_with_its_document_and_diff(
    apply: Apply, session: Session, raw_config: dict[str, Any], normalized: Callable[..., Any]
) -> None:
    result = apply(raw_config, now=T0)

    stored = session.exec(select(ConfigVersion)).one()
    assert (result.version, result.changed) == (1, True)
    assert result.diff[0] == "+ daemon edge-berlin-1"
    assert (stored.id, stored.author, stored.created_at) == (1, "test", T0)
    assert stored.document == normalized(raw_config)


def test_re_applying_the_same_document_is_no_change(
    apply: Apply, session: Session, raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=T0)

    again = apply(raw_config, now=T1)

    assert (again.version, again.changed, again.diff, again.pushes) == (1, False, [], [])
    assert len(session.exec(select(ConfigVersion)).all()) == 1


def test_the_first_apply_pushes_each_declared_daemon_the_pipelines_placed_on_it(
    apply: Apply, get_daemon: Callable[[str], Daemon], raw_config: dict[str, Any]
) -> None:
    result = apply(raw_config, now=T0)

    assert pipelines_of(result) == {
        "edge-berlin-1": ["stock"],
        "edge-berlin-2": ["stock"],
        "edge-paris": ["orders"],
    }
    assert {p.version for p in result.pushes} == {1}
    assert get_daemon("edge-berlin-2").desired_config_version == 1


def test_changing_a_pinned_pipeline_pushes_only_to_its_daemon(
    apply: Apply, get_daemon: Callable[[str], Daemon], raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=T0)
    raw_config["pipelines"][0]["batch_size"] = 500

    result = apply(raw_config, now=T1)

    assert (result.version, list(pipelines_of(result))) == (2, ["edge-paris"])
    assert result.pushes[0].state.pipelines[0].batch_size == 500
    assert get_daemon("edge-paris").desired_config_version == 2
    assert get_daemon("edge-berlin-1").desired_config_version == 1
    assert get_daemon("edge-berlin-2").desired_config_version == 1


def test_changing_a_label_placed_pipeline_pushes_to_every_matching_daemon(
    apply: Apply, raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=T0)
    raw_config["pipelines"][1]["mode"] = "append"

    result = apply(raw_config, now=T1)

    assert pipelines_of(result) == {"edge-berlin-1": ["stock"], "edge-berlin-2": ["stock"]}


def test_changing_a_connector_pushes_to_every_daemon_whose_pipelines_use_it(
    apply: Apply, raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=T0)
    raw_config["connectors"][0] = {"name": "shop", "kind": "postgres", "dsn": "${env:SHOP_DSN}"}

    result = apply(raw_config, now=T1)

    assert set(pipelines_of(result)) == {"edge-berlin-1", "edge-berlin-2", "edge-paris"}
    assert result.pushes[0].state.pipelines[0].source.options == {"dsn": "${env:SHOP_DSN}"}


def test_moving_a_pipeline_pushes_to_the_daemon_it_left_and_the_one_it_joined(
    apply: Apply, raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=T0)
    raw_config["pipelines"][0]["daemon"] = "edge-berlin-1"

    result = apply(raw_config, now=T1)

    assert pipelines_of(result) == {"edge-berlin-1": ["orders", "stock"], "edge-paris": []}


def test_a_label_selector_matching_several_daemons_reaches_each_desired_state(
    apply: Apply, session: Session, get_daemon: Callable[[str], Daemon], raw_config: dict[str, Any]
) -> None:
    raw_config["pipelines"][1]["labels"] = {}
    apply(raw_config, now=T0)

    states = {name: desired_state(session, get_daemon(name)) for name in ("edge-berlin-1", "edge-paris")}

    assert [p.name for p in states["edge-berlin-1"].pipelines] == ["stock"]
    assert [p.name for p in states["edge-paris"].pipelines] == ["orders", "stock"]


def test_removed_pipelines_and_connectors_are_deleted(
    apply: Apply, session: Session, raw_config: dict[str, Any]
) -> None:
    raw_config["connectors"].append({"name": "archive", "kind": "sqlite", "path": "/data/archive.db"})
    apply(raw_config, now=T0)
    del raw_config["connectors"][2]
    del raw_config["pipelines"][1]

    result = apply(raw_config, now=T1)

    assert [c.name for c in session.exec(select(Connector))] == ["shop", "warehouse"]
    assert [p.name for p in session.exec(select(Pipeline))] == ["orders"]
    assert pipelines_of(result) == {"edge-berlin-1": [], "edge-berlin-2": []}
    assert result.diff == ["- connector archive", "- pipeline stock"]


def test_a_daemon_removed_from_the_file_is_kept_but_no_longer_declared(
    apply: Apply, get_daemon: Callable[[str], Daemon], raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=T0)
    del raw_config["daemons"][1]

    result = apply(raw_config, now=T1)

    assert get_daemon("edge-berlin-2").declared is False
    assert pipelines_of(result) == {"edge-berlin-2": []}


@pytest.mark.parametrize(
    ("field", "value", "reset"),
    [
        pytest.param("schedule", "30 * * * *", True, id="schedule-edited"),
        pytest.param("schedule", None, True, id="schedule-removed"),
        pytest.param("timezone", "Europe/Berlin", True, id="timezone-edited"),
        pytest.param("enabled", False, True, id="disabled"),
        pytest.param("batch_size", 500, False, id="batch-size-edited"),
        pytest.param("mode", "append", False, id="mode-edited"),
        pytest.param("daemon", "edge-berlin-1", False, id="moved-to-another-daemon"),
    ],
)
def test_schedule_since_is_reset_only_when_the_schedule_timezone_or_enabled_flag_changes(
    apply: Apply,
    get_pipeline: Callable[[str], Pipeline],
    raw_config: dict[str, Any],
    field: str,
    value: Any,
    reset: bool,
) -> None:
    apply(raw_config, now=T0)
    raw_config["pipelines"][0][field] = value

    apply(raw_config, now=T1)

    assert get_pipeline("orders").schedule_since == (T1 if reset else T0)


def test_a_new_pipeline_counts_its_schedule_from_the_moment_it_is_applied(
    apply: Apply, get_pipeline: Callable[[str], Pipeline], raw_config: dict[str, Any]
) -> None:
    apply(raw_config, now=T0)

    assert get_pipeline("stock").schedule_since == T0


def test_plan_diff_compares_against_the_newest_stored_version(
    apply: Apply, session: Session, raw_config: dict[str, Any], normalized: Callable[..., Any]
) -> None:
    apply(raw_config, now=T0)
    raw_config["pipelines"][1]["enabled"] = False

    assert plan_diff(session, normalized(raw_config)) == ["~ pipeline stock: enabled True -> False"]


def test_the_current_push_carries_the_desired_version_and_full_state(
    apply: Apply, session: Session, get_daemon: Callable[[str], Daemon], raw_config: dict[str, Any]
) -> None:
    first = apply(raw_config, now=T0)
    paris = next(p for p in first.pushes if p.daemon == "edge-paris")

    assert current_push(session, get_daemon("edge-paris")) == paris


def test_a_daemon_that_was_never_given_a_desired_state_has_no_current_push(
    session: Session, add_daemon: Callable[..., Daemon]
) -> None:
    assert current_push(session, add_daemon("edge-new")) is None
