"""Specification of a daemon's confinement as a whole: the roots, kinds and hosts it allows, built
from its settings, and what it does to a pushed config and to a job's connectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cp.protocol import ConnectorSpec, DesiredState, PipelineSpec
from cp.settings import Settings
from workers.confinement.policy import (
    Confinement,
    ConfinementError,
    ConfinementSettingError,
    create_data_folder,
    data_folder,
)


def confinement(tmp_path: Path, *, extra_roots: tuple[str, ...] = (), **settings: Any) -> Confinement:
    return Confinement.from_settings(
        Settings(home=tmp_path / "home", **settings), daemon="edge-1", extra_roots=extra_roots
    )


def spec(kind: str, **options: Any) -> ConnectorSpec:
    return ConnectorSpec(name="c", kind=kind, options=options)


def pipeline(name: str, source: ConnectorSpec, destination: ConnectorSpec) -> PipelineSpec:
    return PipelineSpec(
        name=name, source=source, source_table="t", destination=destination, destination_table="t"
    )


def test_by_default_the_only_root_is_the_daemons_data_folder(tmp_path: Path) -> None:
    allowed = confinement(tmp_path)
    assert allowed.paths.roots == (tmp_path / "home" / "daemons" / "edge-1" / "data",)
    assert (allowed.kinds, allowed.hosts) == (None, None)


def test_roots_come_from_the_setting_and_the_command_line_after_the_data_folder(tmp_path: Path) -> None:
    allowed = confinement(tmp_path, allowed_roots="/srv/a:/srv/b,/srv/c", extra_roots=("/mnt/x:y",))
    assert allowed.paths.roots == (
        data_folder(tmp_path / "home", "edge-1"),
        Path("/srv/a"),
        Path("/srv/b"),
        Path("/srv/c"),
        Path("/mnt/x:y"),  # --allow-root takes one path as it is, colons and all
    )


@pytest.mark.parametrize(
    ("settings", "extra", "message"),
    [
        ({"allowed_roots": "data"}, (), "MYCELIAL_ALLOWED_ROOTS: root 'data' is not an absolute path"),
        ({}, ("../x",), "--allow-root: root '../x' is not an absolute path"),
        ({"allowed_connector_kinds": "sqlite,oracle"}, (), "unknown connector kind 'oracle'"),
        ({"allowed_hosts": "db.internal,bad host!"}, (), "MYCELIAL_ALLOWED_HOSTS: 'host!' is not a host"),
    ],
)
def test_a_setting_that_does_not_parse_stops_the_daemon_with_one_line(
    tmp_path: Path, settings: dict[str, str], extra: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfinementSettingError, match=message.replace(".", r"\.")):
        confinement(tmp_path, extra_roots=extra, **settings)


def test_the_data_folder_is_created_readable_by_the_daemon_only(tmp_path: Path) -> None:
    folder = data_folder(tmp_path / "home", "edge-1")
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)  # as an older release, or the umask, left it
    assert create_data_folder(tmp_path / "home", "edge-1") == folder
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_file_connector_inside_a_root_gets_its_path_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    allowed = confinement(tmp_path, allowed_roots=str(tmp_path / "real"))
    confined = allowed.confined(spec("sqlite", path=f"{tmp_path}/link/shop.db"), role="source")
    assert confined.options == {"path": f"{tmp_path}/real/shop.db"}


def test_a_file_connector_outside_the_roots_is_refused_naming_path_roots_and_setting(tmp_path: Path) -> None:
    allowed = confinement(tmp_path)
    with pytest.raises(ConfinementError) as refused:
        allowed.confined(spec("csv", path="/etc/passwd"), role="source")
    assert str(refused.value) == (
        "source c: option 'path': path /etc/passwd is outside the allowed roots"
        f" ({data_folder(tmp_path / 'home', 'edge-1')}); MYCELIAL_ALLOWED_ROOTS or --allow-root adds roots"
    )
    assert refused.value.retryable is False


@pytest.mark.parametrize("path", [None, 7, "", ["/a"]])
def test_a_forged_path_that_is_not_text_is_refused(tmp_path: Path, path: Any) -> None:
    with pytest.raises(ConfinementError, match="option 'path': a path is required"):
        confinement(tmp_path).confined(spec("sqlite", path=path), role="destination")


def test_a_path_given_by_a_reference_is_resolved_before_it_is_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA", "/etc")
    with pytest.raises(ConfinementError, match="outside the allowed roots"):
        confinement(tmp_path).confined(spec("sqlite", path="${env:DATA}/x.db"), role="destination")


def test_a_kind_the_daemon_does_not_allow_is_refused(tmp_path: Path) -> None:
    allowed = confinement(tmp_path, allowed_connector_kinds="sqlite, postgres")
    assert allowed.kinds == frozenset({"sqlite", "postgres"})
    with pytest.raises(ConfinementError) as refused:
        allowed.confined(spec("mysql", database="x"), role="destination")
    assert str(refused.value) == (
        "destination c: connector kind 'mysql' is not allowed on this daemon"
        " (allowed: postgres, sqlite; MYCELIAL_ALLOWED_CONNECTOR_KINDS)"
    )


def test_hosts_are_checked_for_database_connectors_only_when_restricted(tmp_path: Path) -> None:
    anything = confinement(tmp_path)
    assert anything.confined(spec("postgres", dsn="host=evil.example"), role="source")
    restricted = confinement(tmp_path, allowed_hosts="db.internal,10.0.0.0/8")
    assert restricted.confined(spec("postgres", dsn="postgresql://u@db.internal/x"), role="source")
    assert restricted.confined(spec("mysql", host="10.2.3.4", database="x"), role="source")
    with pytest.raises(ConfinementError) as refused:
        restricted.confined(spec("postgres", dsn="host=db.internal,evil.example"), role="source")
    assert str(refused.value) == (
        "source c: host evil.example is not allowed on this daemon"
        " (allowed: db.internal, 10.0.0.0/8; MYCELIAL_ALLOWED_HOSTS)"
    )
    with pytest.raises(ConfinementError, match="host 127.0.0.1 is not allowed"):
        restricted.confined(spec("mysql", database="x"), role="source")  # PyMySQL's default host
    with pytest.raises(ConfinementError, match=r"dsn names no host .*\(MYCELIAL_ALLOWED_HOSTS is set\)"):
        restricted.confined(spec("postgres", dsn="dbname=x"), role="source")


def test_a_dsn_held_in_a_reference_is_judged_by_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_PW", "pw-s3cret-v4lue")
    monkeypatch.setenv("PG_DSN", "postgresql://app:pw-s3cret-v4lue@evil.example/x")
    restricted = confinement(tmp_path, allowed_hosts="db.internal")
    with pytest.raises(ConfinementError, match="host evil.example is not allowed"):
        restricted.confined(
            spec("postgres", dsn="postgresql://app:${env:PG_PW}@evil.example/x"), role="source"
        )
    with pytest.raises(ConfinementError) as whole:  # refused too; the host, part of a secret, is masked
        restricted.confined(spec("postgres", dsn="${env:PG_DSN}"), role="source")
    assert str(whole.value).startswith("source c: host ***.*** is not allowed")
    assert "s3cret" not in str(whole.value)


def test_a_pushed_config_is_judged_pipeline_by_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_YET", raising=False)
    data = data_folder(tmp_path / "home", "edge-1")
    inside = spec("sqlite", path=f"{data}/a.db")
    state = DesiredState(
        daemon="edge-1",
        pipelines=[
            pipeline("fine", inside, spec("sqlite", path=f"{data}/b.db")),
            pipeline("escapes", inside, spec("sqlite", path="/tmp/evil.db")),
            pipeline("later", inside, spec("sqlite", path="${env:NOT_SET_YET}/x.db")),  # judged at run time
        ],
    )
    problems = confinement(tmp_path).config_problems(state)
    assert len(problems) == 1
    assert problems[0].startswith(
        "pipeline escapes: destination c: option 'path': path /tmp/evil.db is outside"
    )


def test_a_whole_pipeline_comes_back_with_both_ends_confined(tmp_path: Path) -> None:
    data = data_folder(tmp_path / "home", "edge-1")
    confined = confinement(tmp_path).pipeline(
        pipeline("p", spec("sqlite", path=f"/{data}/./a.db"), spec("sqlite", path=f"{data}//b.db"))
    )
    assert (confined.source.options["path"], confined.destination.options["path"]) == (
        f"{data}/a.db",
        f"{data}/b.db",
    )
