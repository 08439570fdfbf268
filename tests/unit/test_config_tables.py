"""Tables a configuration may name: no reserved names, one pipeline per destination, no loops."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from cp.config.tables import ConnectorRef, connector_key, is_reserved, table_key
from cp.config_file import ConfigError, parse_config_text

SOURCE = "mycelial.yaml"
RESERVED = "starts with the reserved prefix _mycelial (the engine's own staging and state tables)"


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(yaml.safe_dump(raw, sort_keys=False), source=SOURCE)
    return caught.value.problems


def accepted(raw: dict[str, Any]) -> dict[str, Any]:
    return parse_config_text(yaml.safe_dump(raw, sort_keys=False), source=SOURCE)


def add_connector(raw: dict[str, Any], name: str, kind: str, **options: Any) -> None:
    raw["connectors"].append({"name": name, "kind": kind, **options})


# --- the reserved prefix ------------------------------------------------------------------


@pytest.mark.parametrize(
    "table",
    [
        "_mycelial_stage_x",
        "_MYCELIAL_stage_orders",
        "_mycelial_state",
        "public._mycelial_stage_orders",
        '"public"."_mycelial_old_orders"',
        "`_Mycelial_x`",
        "_mycelial.orders",
    ],
)
def test_a_destination_with_the_reserved_prefix_is_refused(raw_config: dict[str, Any], table: str) -> None:
    raw_config["pipelines"][0]["destination"]["table"] = table

    assert problems_of(raw_config) == [f"{SOURCE}: pipelines[0].destination.table: {table!r} {RESERVED}"]


def test_a_source_table_with_the_reserved_prefix_is_refused(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][0]["source"]["table"] = "main._mycelial_state"

    assert problems_of(raw_config) == [
        f"{SOURCE}: pipelines[0].source.table: 'main._mycelial_state' {RESERVED}"
    ]


@pytest.mark.parametrize("table", ["mycelial_orders", "orders_mycelial", "x_mycelial_stage", "my_celial"])
def test_names_that_merely_contain_the_word_are_accepted(raw_config: dict[str, Any], table: str) -> None:
    raw_config["pipelines"][0]["destination"]["table"] = table

    assert accepted(raw_config)["pipelines"][0]["destination"]["table"] == table


# --- one pipeline per destination table ---------------------------------------------------


def test_two_pipelines_writing_one_table_are_refused(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][1]["destination"]["table"] = "orders"

    assert problems_of(raw_config) == [
        f"{SOURCE}: pipelines[1].destination: table 'orders' of connector 'warehouse' is already "
        "written by pipeline 'orders' (pipelines[0]); one table takes one pipeline"
    ]


@pytest.mark.parametrize(
    ("kind", "options", "first", "second"),
    [
        ("postgres", {"dsn": "postgresql://dw/dw"}, "orders", "public.orders"),
        ("postgres", {"dsn": "postgresql://dw/dw", "schema": "sales"}, "orders", '"sales"."ORDERS"'),
        ("postgres", {"dsn": "postgresql://dw/dw"}, "Orders", '"orders"'),
        ("mysql", {"database": "dw"}, "orders", "dw.orders"),
        ("mysql", {"database": "dw"}, "orders", "`DW`.`Orders`"),
        ("sqlite", {"path": "/data/dw.db"}, "orders", "main.orders"),
        ("sqlite", {"path": "/data/dw.db"}, "orders", "[ORDERS]"),
    ],
    ids=[
        "pg-default-schema",
        "pg-schema-option",
        "pg-quotes-and-case",
        "mysql-db",
        "mysql-quotes",
        "sqlite-main",
        "sqlite-brackets",
    ],
)
def test_one_table_written_two_ways_is_still_one_table(
    raw_config: dict[str, Any], kind: str, options: dict[str, Any], first: str, second: str
) -> None:
    add_connector(raw_config, "dw", kind, **options)
    raw_config["pipelines"][0]["destination"] = {"connector": "dw", "table": first}
    raw_config["pipelines"][1]["destination"] = {"connector": "dw", "table": second}

    (problem,) = problems_of(raw_config)
    assert problem.startswith(f"{SOURCE}: pipelines[1].destination: table {second!r} of connector 'dw'")


def test_two_sqlite_connectors_on_one_file_are_one_database(raw_config: dict[str, Any]) -> None:
    add_connector(raw_config, "warehouse-again", "sqlite", path="//data/./warehouse.db")
    raw_config["pipelines"][1]["destination"] = {"connector": "warehouse-again", "table": "orders"}

    (problem,) = problems_of(raw_config)
    assert "is already written by pipeline 'orders' (pipelines[0])" in problem


def test_two_postgres_connectors_with_one_dsn_are_one_database(raw_config: dict[str, Any]) -> None:
    add_connector(raw_config, "dw-a", "postgres", dsn="postgresql://db/dw")
    add_connector(raw_config, "dw-b", "postgres", dsn="postgresql://db/dw")
    raw_config["pipelines"][0]["destination"] = {"connector": "dw-a", "table": "orders"}
    raw_config["pipelines"][1]["destination"] = {"connector": "dw-b", "table": "public.orders"}

    (problem,) = problems_of(raw_config)
    assert "pipelines[1].destination: table 'public.orders' of connector 'dw-b' is already written" in problem


def test_one_table_name_in_two_schemas_or_databases_is_two_tables(raw_config: dict[str, Any]) -> None:
    add_connector(raw_config, "dw", "postgres", dsn="postgresql://db/dw")
    raw_config["pipelines"][0]["destination"] = {"connector": "dw", "table": "sales.orders"}
    raw_config["pipelines"][1]["destination"] = {"connector": "dw", "table": "staging.orders"}

    assert [p["destination"]["table"] for p in accepted(raw_config)["pipelines"]] == [
        "sales.orders",
        "staging.orders",
    ]


def test_one_table_name_on_two_servers_is_two_tables(raw_config: dict[str, Any]) -> None:
    add_connector(raw_config, "eu", "mysql", host="eu.db", database="dw")
    add_connector(raw_config, "us", "mysql", host="us.db", database="dw")
    raw_config["pipelines"][0]["destination"] = {"connector": "eu", "table": "orders"}
    raw_config["pipelines"][1]["destination"] = {"connector": "us", "table": "orders"}

    assert len(accepted(raw_config)["pipelines"]) == 2


def test_many_pipelines_may_read_one_table(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][1]["source"] = {"connector": "shop", "table": "orders"}

    assert [p["source"]["table"] for p in accepted(raw_config)["pipelines"]] == ["orders", "orders"]


# --- a pipeline's destination is not its source -------------------------------------------


def test_a_pipeline_writing_the_table_it_reads_is_refused(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][0]["destination"] = {"connector": "shop", "table": "ORDERS"}

    assert problems_of(raw_config) == [
        f"{SOURCE}: pipelines[0].destination: table 'ORDERS' of connector 'shop' is the pipeline's own source"
    ]


def test_a_pipeline_writing_the_table_it_reads_through_another_connector_is_refused(
    raw_config: dict[str, Any],
) -> None:
    add_connector(raw_config, "shop-alias", "sqlite", path="/data//shop.db")
    raw_config["pipelines"][0]["destination"] = {"connector": "shop-alias", "table": "main.orders"}

    (problem,) = problems_of(raw_config)
    assert problem.endswith("of connector 'shop-alias' is the pipeline's own source")


def test_a_pipeline_may_write_another_table_of_its_source_database(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][0]["destination"] = {"connector": "shop", "table": "orders_copy"}

    assert accepted(raw_config)["pipelines"][0]["destination"] == {
        "connector": "shop",
        "table": "orders_copy",
        "query": None,
    }


def test_a_query_source_is_not_compared_with_its_destination(raw_config: dict[str, Any]) -> None:
    raw_config["pipelines"][1]["destination"] = {"connector": "shop", "table": "stock"}

    assert accepted(raw_config)["pipelines"][1]["source"]["query"] == "SELECT * FROM stock"


# --- the pure helpers ---------------------------------------------------------------------


def test_table_keys_fill_in_the_default_schema_or_database() -> None:
    pg = ConnectorRef(name="pg", kind="postgres", options={"dsn": "x"})
    my = ConnectorRef(name="my", kind="mysql", options={"database": "DW"})

    assert table_key(pg, "Orders") == ("public", "orders")
    assert table_key(pg, "a.b.orders") == ("a.b", "orders")
    assert table_key(my, "orders") == ("dw", "orders")
    assert table_key(my, "other.orders") == ("other", "orders")


def test_connector_keys_name_the_database_a_connector_reaches() -> None:
    assert connector_key(ConnectorRef(name="a", kind="sqlite", options={"path": "x/../a.db"})) == (
        "file",
        "a.db",
    )
    assert connector_key(ConnectorRef(name="b", kind="mysql", options={"host": "DB"})) == (
        "mysql",
        "db",
        "3306",
    )
    assert connector_key(ConnectorRef(name="c", kind="future", options={})) == ("connector", "c")


def test_reserved_names_are_found_in_any_part() -> None:
    assert is_reserved("_mycelial_x")
    assert is_reserved('"_MYCELIAL".orders')
    assert not is_reserved("mycelial._x")
