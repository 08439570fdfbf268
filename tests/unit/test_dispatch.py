"""Specification of messages to daemons: own queue, expiry, and nothing secret in what Flower shows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cp.config_store import ApplyResult, ConfigPush
from cp.dispatch import MemoryDispatcher, apply_config_message, job_outgoing, job_payload, run_job_message
from cp.protocol import ApplyConfig, ConnectorSpec, DesiredState, PipelineSpec, RunJob, parse

SECRET_OPTIONS = {"host": "db.internal", "user": "etl", "password": "${env:PG_PASSWORD}"}


def pipeline_spec(name: str = "orders") -> PipelineSpec:
    return PipelineSpec(
        name=name,
        source=ConnectorSpec(name="crm", kind="postgres", options=SECRET_OPTIONS),
        source_table="customers",
        destination=ConnectorSpec(
            name="warehouse", kind="sqlite", options={"path": "${file:/run/secrets/p}"}
        ),
        destination_table="customers",
    )


def job(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "daemon": "edge-1",
        "run_key": "orders@2025-06-02T11:00:00Z",
        "task_id": "orders@2025-06-02T11:00:00Z",
        "attempt": 2,
        "pipeline": pipeline_spec(),
        "cursor": "41",
        "expires": 300.0,
        "max_attempts": 3,
    }
    return run_job_message(**{**fields, **overrides})


def test_a_job_goes_to_its_daemons_own_queue_with_an_expiry_and_the_run_key_as_task_id() -> None:
    message = job()

    assert (message.task, message.queue, message.task_id, message.expires) == (
        "daemon.run_job",
        "mycelial.daemon.edge-1",
        "orders@2025-06-02T11:00:00Z",
        300.0,
    )


def test_a_job_argsrepr_names_pipeline_run_attempt_of_max_and_daemon_and_no_connector_option() -> None:
    message = job()

    assert message.argsrepr == "attempt 2/3 pipeline=orders daemon=edge-1 run=orders@2025-06-02T11:00:00Z"
    for hidden in ("PG_PASSWORD", "${", "db.internal", "etl", "/run/secrets"):
        assert hidden not in message.argsrepr


def test_a_job_whose_options_hold_literal_secrets_shows_none_of_them_in_its_argsrepr() -> None:
    literal = {"host": "10.1.2.3", "user": "loader", "password": "Hunter2-literal", "sslkey": "/keys/k.pem"}
    spec = pipeline_spec().model_copy(
        update={"source": ConnectorSpec(name="crm", kind="postgres", options=literal)}
    )

    message = job(pipeline=spec)

    assert "Hunter2-literal" in str(message.payload)  # the daemon needs it; Flower must not show it
    for hidden in literal.values():
        assert hidden not in message.argsrepr


def test_the_scheduler_and_a_single_queued_run_describe_a_job_alike() -> None:
    payload = job_payload(run_key="orders@1", attempt=1, pipeline=pipeline_spec().model_dump(mode="json"))

    from_tick = job_outgoing(
        daemon="edge-1",
        task_id="orders@1",
        payload=payload,
        pipeline_name="orders",
        max_attempts=3,
        expires=60.0,
    )

    assert from_tick.argsrepr == job(run_key="orders@1", task_id="orders@1", attempt=1).argsrepr
    assert from_tick.argsrepr == "attempt 1/3 pipeline=orders daemon=edge-1 run=orders@1"


def test_a_job_payload_is_a_valid_run_job_carrying_references_not_values() -> None:
    payload = parse(RunJob, job().payload)

    assert (payload.run_key, payload.attempt, payload.cursor) == ("orders@2025-06-02T11:00:00Z", 2, "41")
    assert payload.pipeline.source.options["password"] == "${env:PG_PASSWORD}"


def push(daemon: str = "edge-1", pipelines: tuple[str, ...] = ("orders", "stock")) -> ConfigPush:
    state = DesiredState(
        daemon=daemon, labels={"site": "berlin"}, pipelines=[pipeline_spec(n) for n in pipelines]
    )
    return ConfigPush(daemon=daemon, version=7, checksum="abc123", state=state)


def test_a_config_push_goes_to_the_daemons_own_queue_with_an_expiry() -> None:
    message = apply_config_message(push(), expires=60.0)

    assert (message.task, message.queue, message.expires) == (
        "daemon.apply_config",
        "mycelial.daemon.edge-1",
        60.0,
    )


def test_a_config_push_argsrepr_names_daemon_version_and_pipelines_only() -> None:
    message = apply_config_message(push(), expires=60.0)

    assert message.argsrepr == "daemon=edge-1 version=7 pipelines=orders,stock"
    assert "PG_PASSWORD" not in message.argsrepr and "${" not in message.argsrepr


def test_an_empty_config_push_says_so_in_its_argsrepr() -> None:
    assert (
        apply_config_message(push(pipelines=()), expires=60.0).argsrepr
        == "daemon=edge-1 version=7 pipelines=-"
    )


def test_a_config_push_payload_is_the_full_desired_state() -> None:
    payload = parse(ApplyConfig, apply_config_message(push(), expires=60.0).payload)

    assert (payload.version, payload.checksum, payload.state) == (7, "abc123", push().state)


def test_applying_a_configuration_yields_pushes_whose_messages_reach_each_daemon(
    apply: Callable[..., ApplyResult], raw_config: dict[str, Any]
) -> None:
    dispatcher = MemoryDispatcher()
    raw_config["connectors"][0] = {"name": "shop", "kind": "postgres", "dsn": "${env:SHOP_DB}"}

    for each in apply(raw_config, now=datetime(2025, 6, 2, 9, 0, tzinfo=UTC)).pushes:
        dispatcher.send(apply_config_message(each, expires=60.0))

    assert [m.queue for m in dispatcher.sent] == [
        "mycelial.daemon.edge-berlin-1",
        "mycelial.daemon.edge-berlin-2",
        "mycelial.daemon.edge-paris",
    ]
    assert all("SHOP_DB" not in m.argsrepr for m in dispatcher.sent)


def test_a_job_payload_built_from_a_dumped_spec_is_the_same_as_the_validated_message() -> None:
    from cp.dispatch import job_payload
    from cp.protocol import ConnectorSpec, PipelineSpec, RunJob, dump, parse

    spec = PipelineSpec(
        name="orders",
        source=ConnectorSpec(name="shop", kind="sqlite", options={"path": "a.db"}),
        source_table="orders",
        destination=ConnectorSpec(name="dw", kind="postgres", options={"dsn": "postgresql://x@h/db"}),
        destination_table="orders",
        mode="incremental",
        cursor_column="updated_at",
        key_columns=["id"],
    )
    fast = job_payload(run_key="orders@1", attempt=2, pipeline=spec.model_dump(mode="json"))
    assert fast == dump(RunJob(run_key="orders@1", attempt=2, pipeline=spec))
    assert parse(RunJob, fast).pipeline == spec


def test_a_job_carries_its_pipelines_timeout_both_ways_it_is_built() -> None:
    from cp.dispatch import job_payload
    from cp.protocol import dump

    spec = pipeline_spec()
    validated = parse(RunJob, job(timeout_seconds=5.0).payload)
    fast = job_payload(
        run_key="orders@1", attempt=1, pipeline=spec.model_dump(mode="json"), timeout_seconds=5.0
    )
    assert validated.timeout_seconds == 5.0
    assert fast == dump(RunJob(run_key="orders@1", attempt=1, pipeline=spec, timeout_seconds=5.0))
    assert parse(RunJob, job().payload).timeout_seconds is None
