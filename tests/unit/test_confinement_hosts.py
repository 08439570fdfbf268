"""Specification of the host rules of data-plane confinement: what a rule admits, and which hosts
a PostgreSQL or MySQL connector makes its driver try."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.confinement.hosts import HostRefused, HostRules, mysql_hosts, postgres_hosts

RULES = "db.internal, *.corp.example, 10.0.0.0/8, 192.168.1.7, fd00::/8, /var/run/postgresql, @pgsock"


def rules(text: str = RULES) -> HostRules:
    parsed = HostRules.parse(text, what="MYCELIAL_ALLOWED_HOSTS")
    assert parsed is not None
    return parsed


def test_an_empty_setting_allows_every_host() -> None:
    assert HostRules.parse("", what="S") is None
    assert HostRules.parse(" , ", what="S") is None


@pytest.mark.parametrize(
    "host",
    [
        "db.internal",
        "DB.Internal",
        "db.internal.",
        "a.corp.example",
        "a.b.corp.example",
        "10.1.2.3",
        "192.168.1.7",
        "::ffff:10.0.0.9",
        "fd00::1",
        "[fd00::1]",
        "/var/run/postgresql",
        "/var/run/postgresql/",
        "/var/run/postgresql/sub",
        "@pgsock",
    ],
)
def test_a_host_a_rule_names_is_allowed(host: str) -> None:
    assert rules().allows(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.com",
        "db.internal.evil.com",
        "xdb.internal",
        "corp.example",  # a wildcard admits subdomains, not the domain itself
        "evilcorp.example",
        "11.0.0.1",
        "192.168.1.8",
        "010.0.0.1",  # inet_aton would read it as 8.0.0.1: a name here, and no name rule has it
        "10.1",  # inet_aton shorthand for 10.0.0.1: a name, not an address
        "0x0a000001",
        "::ffff:11.0.0.1",
        "fe80::1",
        "/var/run/postgresql/../../tmp",
        "/var/run/postgresql-evil",
        "/tmp",
        "@other",
        " db.internal",
        "db.internal\x00.evil.com",
        "",
        "db.internal:5432",
    ],
)
def test_a_host_no_rule_names_is_refused(host: str) -> None:
    assert not rules().allows(host)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("db.internal, host!", "'host!' is not a host name"),
        ("*.", "'*.' is not a wildcard over a host name"),
        ("/var/../etc", "socket folder '/var/../etc' must be a plain absolute path"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not a host name"),
    ],
)
def test_a_rule_that_does_not_parse_is_refused_at_start(text: str, message: str) -> None:
    with pytest.raises(HostRefused, match="^S: " + message.replace("*", r"\*").replace(".", r"\.")):
        HostRules.parse(text, what="S")


@given(st.text(max_size=40))
def test_a_name_rule_admits_only_its_own_name(host: str) -> None:
    allowed = rules("db.internal").allows(host)
    assert allowed == (host.lower().removesuffix(".") == "db.internal")


# --- the hosts a connector makes its driver try -----------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "hosts"),
    [
        ("host=db.internal dbname=x", ["db.internal"]),
        ("host=a,b,c port=1,2,3", ["a", "b", "c"]),
        ("postgresql://u@h1:5432,h2:5433/db", ["h1", "h2"]),
        ("postgresql://[::1]:5/db", ["::1"]),
        ("postgresql://%2Fvar%2Frun%2Fpostgresql/db", ["/var/run/postgresql"]),
        ("postgresql:///db?host=/tmp", ["/tmp"]),
        ("host=db.internal hostaddr=10.0.0.5", ["10.0.0.5"]),  # libpq connects to the hostaddr
        ("host=a,b hostaddr=10.0.0.5,", ["10.0.0.5", "b"]),
        ("hostaddr=10.0.0.5 dbname=x", ["10.0.0.5"]),
        ("host='db.internal' dbname='x y'", ["db.internal"]),
        ("host= dbname=x", ["dbname=x"]),  # libpq skips the blank: the host is "dbname=x"
    ],
)
def test_the_hosts_of_a_libpq_string_are_those_libpq_tries(dsn: str, hosts: list[str]) -> None:
    assert postgres_hosts(dsn, environ={}) == hosts


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("dbname=x", "names no host"),
        ("postgresql:///x", "names no host"),
        ("host='' dbname=x", "names no host"),
        ("host=a,,b", "host 2 is empty"),
        ("host=a,b hostaddr=10.0.0.1", "2 host and 1 hostaddr values"),
        ("service=prod", "uses a service"),
        ("host=a nonsense=1", "does not parse"),
        ("host", "does not parse"),
        ("host=db.internal\x00host=evil", "NUL byte"),
    ],
)
def test_a_libpq_string_whose_hosts_cannot_be_told_is_refused(dsn: str, message: str) -> None:
    with pytest.raises(HostRefused, match=message):
        postgres_hosts(dsn, environ={})


def test_hosts_left_out_come_from_the_pg_environment_as_libpq_takes_them() -> None:
    assert postgres_hosts("dbname=x", environ={"PGHOST": "a,b"}) == ["a", "b"]
    assert postgres_hosts("host=a", environ={"PGHOSTADDR": "10.0.0.9"}) == ["10.0.0.9"]
    assert postgres_hosts("host=a", environ={"PGHOST": "evil"}) == ["a"]
    with pytest.raises(HostRefused, match="uses a service"):
        postgres_hosts("host=a", environ={"PGSERVICE": "prod"})


def test_a_mysql_connector_has_its_one_host() -> None:
    assert mysql_hosts("db.internal") == ["db.internal"]
    for bad in ("", "a,b", "a\x00b"):
        with pytest.raises(HostRefused):
            mysql_hosts(bad)
