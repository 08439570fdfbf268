"""At apply, a literal password in any DSN form is refused, and a secret reference is accepted only
in the options a connector kind declares secret-capable."""

from __future__ import annotations

import pytest

from cp.config_file import ConfigError, parse_config_text

BASE = """
daemons: [{{name: edge}}]
connectors:
  - {{name: src, {source}}}
  - {{name: dst, kind: sqlite, path: /data/b.db}}
pipelines:
  - name: p
    source: {{connector: src, table: {table}}}
    destination: {{connector: dst, table: t}}
    daemon: edge
"""

HELP = "(${env:NAME} or ${file:/path})"


def problems(source: str, *, table: str = "s") -> list[str]:
    try:
        parse_config_text(BASE.format(source=source, table=table), source="f.yaml")
    except ConfigError as exc:
        return exc.problems
    return []


LITERAL_DSNS = [
    "postgresql://app:hunter2@db/shop",
    "postgresql://app:p@ss@word@db/shop",
    "postgresql://app:pa/ss@db/shop",
    "postgres://db/shop?password=hunter2",
    "postgresql://db/shop?user=app&PASSWORD=hunter2",
    "postgresql://db/shop?password=${env:PG_PASSWORD}&password=hunter2",
    "postgresql://db/shop?sslpassword=k3y",
    "postgresql://app:${env:PG_PASSWORD}@db/shop?sslpassword=k3y",
    "postgresql://db/shop?pass%77ord=hunter2",
    "host=db user=app password=hunter2",
    "host=db user=app password = 'two words'",
    "host=db password=${env:PG_PASSWORD} password=hunter2",
    "host=db sslpassword=k3y password=${env:PG_PASSWORD}",
    "host=db password=${env:PG_PASSWORD}hunter2",
]


@pytest.mark.parametrize("dsn", LITERAL_DSNS)
def test_a_literal_password_in_any_postgres_dsn_form_is_refused(dsn: str) -> None:
    assert problems(f'kind: postgres, dsn: "{dsn}"') == [
        f"f.yaml: connectors[0].dsn: Value error, the password in dsn must be a secret reference {HELP},"
        " not a literal"
    ]


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:${env:PG_PASSWORD}@db/shop",
        "postgresql://app:${file:/run/secrets/pg}@db/shop?sslpassword=${env:KEY_PASSWORD}",
        "postgresql://db/shop?password=${env:A}&password=${env:B}",
        "host=db user=app password='${file:/run/secrets/my pg}'",
        "host=db user=app",
        "postgresql://app@db/shop",
        "${env:PG_DSN}",
    ],
)
def test_a_password_given_as_a_reference_is_accepted(dsn: str) -> None:
    assert problems(f'kind: postgres, dsn: "{dsn}"') == []


def test_a_keyword_string_that_does_not_parse_but_names_a_password_is_refused() -> None:
    assert problems('kind: postgres, dsn: "host=db password=\'unterminated"') == [
        "f.yaml: connectors[0].dsn: Value error,"
        " dsn does not parse as key=value pairs, and it names a password"
    ]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("host", "mysql://root:hunter2@db/shop"),
        ("host", "mysql+pymysql://root:hunter2@db:3306/shop"),
        ("host", "mariadb://root:hunter2@db"),
        ("user", "password=hunter2 host=db"),
    ],
)
def test_a_literal_password_in_a_mysql_url_form_is_refused_wherever_it_is(option: str, value: str) -> None:
    assert problems(f'kind: mysql, database: shop, {option}: "{value}"') == [
        f"f.yaml: connectors[0].{option}: the password in {option} must be a secret reference {HELP},"
        " not a literal"
    ]


def test_a_literal_mysql_password_is_refused_with_how_to_give_it() -> None:
    assert problems("kind: mysql, database: shop, password: 'hunter2'") == [
        f"f.yaml: connectors[0].password: Value error,"
        f" password must be a secret reference {HELP}, not a literal"
    ]


@pytest.mark.parametrize(
    ("source", "where", "takes"),
    [
        ("kind: sqlite, path: '/data/${env:SHOP_DB}.db'", "path", "a sqlite connector takes none"),
        ("kind: csv, path: '${env:IN_DIR}/'", "path", "a csv connector takes none"),
        ("kind: jsonl, path: /data/in/, pattern: '${env:P}'", "pattern", "a jsonl connector takes none"),
        ("kind: csv, path: /data/in/, columns: {id: '${env:T}'}", "columns.id", "a csv connector takes none"),
        (
            "kind: postgres, dsn: 'host=db', schema: '${env:S}'",
            "schema",
            "a postgres connector takes one only in dsn",
        ),
        (
            "kind: mysql, database: '${env:DB}', password: '${env:PW}'",
            "database",
            "a mysql connector takes one only in password",
        ),
    ],
)
def test_a_reference_outside_the_secret_options_of_its_kind_is_refused(
    source: str, where: str, takes: str
) -> None:
    assert f"f.yaml: connectors[0].{where}: a secret reference is not allowed here ({takes})" in problems(
        source
    )


def test_a_reference_in_a_table_name_is_refused() -> None:
    assert problems("kind: sqlite, path: /data/a.db", table="'${env:TABLE}'") == [
        "f.yaml: pipelines[0].source.table: a secret reference is not allowed here"
        " (only in a connector's secret options)"
    ]
