"""A daemon's data-plane confinement: the roots its file connectors stay under, and the connector
kinds and hosts it allows. Checked when a config arrives and again when a job runs, so a forged or
stale job cannot escape either. Settings in docs/configuration.md, reasons in docs/security.md."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cp.connectors import CONNECTOR_KINDS
from cp.protocol import ConnectorSpec, DesiredState, PipelineSpec
from cp.settings import Settings
from workers.confinement.hosts import HostRefused, HostRules, mysql_hosts, postgres_hosts
from workers.confinement.paths import PathGuard, PathRefused, checked_root, parse_roots
from workers.movement.errors import MovementError
from workers.secrets import SecretError, resolve

log = logging.getLogger(__name__)

ROOTS_SETTING = "MYCELIAL_ALLOWED_ROOTS"
KINDS_SETTING = "MYCELIAL_ALLOWED_CONNECTOR_KINDS"
HOSTS_SETTING = "MYCELIAL_ALLOWED_HOSTS"


class ConfinementError(MovementError):
    """A connector the daemon's confinement refuses; never retried, as nothing will change it."""


class ConfinementSettingError(ValueError):
    """An allowed root, kind or host setting that does not parse."""


def data_folder(home: Path, daemon: str) -> Path:
    """The daemon's own data folder, its root by default."""
    return home / "daemons" / daemon / "data"


def create_data_folder(home: Path, daemon: str) -> Path:
    """The daemon's data folder, created readable by its user only."""
    folder = data_folder(home, daemon)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)  # mkdir leaves an existing one (and the umask) as they were
    return folder


@dataclass(frozen=True)
class Confinement:
    paths: PathGuard
    kinds: frozenset[str] | None = None  # None: every kind
    hosts: HostRules | None = None  # None: every host

    @classmethod
    def from_settings(
        cls, settings: Settings, *, daemon: str, extra_roots: Sequence[str] = ()
    ) -> Confinement:
        """The daemon's data folder, the roots of ``MYCELIAL_ALLOWED_ROOTS`` and ``extra_roots``
        (``--allow-root``), and the kind and host settings; ConfinementSettingError if one is bad."""
        try:
            roots = [data_folder(settings.home, daemon).absolute()]
            roots += parse_roots(settings.allowed_roots, what=ROOTS_SETTING)
            roots += [checked_root(r, what="--allow-root") for r in extra_roots]
            hosts = HostRules.parse(settings.allowed_hosts, what=HOSTS_SETTING)
        except (PathRefused, HostRefused) as exc:
            raise ConfinementSettingError(str(exc)) from None
        return cls(
            paths=PathGuard(tuple(dict.fromkeys(roots))),
            kinds=_kinds(settings.allowed_connector_kinds),
            hosts=hosts,
        )

    def announce(self) -> None:
        """Log what the daemon allows, once its logging is set up."""
        for root in self.paths.roots:
            if not root.is_dir():
                log.warning("allowed root %s is not a folder (yet)", root)
        log.info(
            "confinement: file roots %s; connector kinds %s; hosts %s",
            self.paths.describe(),
            ", ".join(sorted(self.kinds)) if self.kinds is not None else "all",
            self.hosts.text if self.hosts is not None else "all",
        )

    # --- checks

    def confined(self, spec: ConnectorSpec, *, role: str) -> ConnectorSpec:
        """``spec`` with its path resolved, when the daemon allows it; ConfinementError otherwise.
        ``role`` (source, destination) names the connector in the message."""
        where = f"{role} {spec.name}"
        if self.kinds is not None and spec.kind not in self.kinds:
            allowed = ", ".join(sorted(self.kinds)) or "none"
            raise ConfinementError(
                f"{where}: connector kind {spec.kind!r} is not allowed on this daemon"
                f" (allowed: {allowed}; {KINDS_SETTING})"
            )
        options = dict(spec.options)
        path_options = _path_options(spec.kind)
        for key in sorted(path_options):
            options[key] = str(self._path(options.get(key), where=f"{where}: option {key!r}"))
        if self.hosts is not None and not path_options:
            self._check_hosts(spec, where)
        return spec.model_copy(update={"options": options})

    def pipeline(self, spec: PipelineSpec) -> PipelineSpec:
        """``spec`` with both connectors confined (see ``confined``)."""
        return spec.model_copy(
            update={
                "source": self.confined(spec.source, role="source"),
                "destination": self.confined(spec.destination, role="destination"),
            }
        )

    def config_problems(self, state: DesiredState) -> list[str]:
        """Why each pipeline of a pushed config is refused; a reference this process cannot
        resolve now is left to the run, which checks again."""
        problems: list[str] = []
        for pipe in state.pipelines:
            try:
                self.pipeline(pipe)
            except ConfinementError as exc:
                problems.append(f"pipeline {pipe.name}: {exc}")
            except SecretError:
                continue
        return problems

    def _path(self, raw: Any, *, where: str) -> Path:
        if not isinstance(raw, str) or not raw:
            raise ConfinementError(f"{where}: a path is required (got {type(raw).__name__})")
        try:
            return self.paths.confine(resolve(raw))
        except PathRefused as exc:
            raise ConfinementError(f"{where}: {exc}; {ROOTS_SETTING} or --allow-root adds roots") from None

    def _check_hosts(self, spec: ConnectorSpec, where: str) -> None:
        assert self.hosts is not None
        try:
            if spec.kind == "postgres":
                hosts = postgres_hosts(resolve(str(spec.options.get("dsn") or "")))
            elif spec.kind == "mysql":
                host = spec.options.get("host")
                hosts = mysql_hosts(resolve(str(host if host is not None else "127.0.0.1")))
            else:
                raise HostRefused(f"cannot tell which hosts a {spec.kind!r} connector connects to")
        except HostRefused as exc:
            raise ConfinementError(f"{where}: {exc} ({HOSTS_SETTING} is set)") from None
        refused = [h for h in hosts if not self.hosts.allows(h)]
        if refused:
            raise ConfinementError(
                f"{where}: host {', '.join(refused)} is not allowed on this daemon"
                f" (allowed: {self.hosts.text}; {HOSTS_SETTING})"
            )


def _path_options(kind: str) -> frozenset[str]:
    options = CONNECTOR_KINDS.get(kind)
    return options.path_options if options is not None else frozenset()


def _kinds(text: str) -> frozenset[str] | None:
    names = [k.strip().lower() for k in text.replace(" ", ",").split(",") if k.strip()]
    if not names:
        return None
    unknown = sorted(set(names) - set(CONNECTOR_KINDS))
    if unknown:
        known = ", ".join(sorted(CONNECTOR_KINDS))
        raise ConfinementSettingError(
            f"{KINDS_SETTING}: unknown connector kind {unknown[0]!r} (known: {known})"
        )
    return frozenset(names)
