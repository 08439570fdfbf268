"""Which database hosts a daemon may connect to, and the hosts a connector's options name.

Pure. Rules are host names (``db.internal``), subdomain wildcards (``*.db.internal``), IP addresses
and networks (``10.0.0.0/8``, ``fd00::/8``), and Unix socket folders (``/var/run/postgresql``).
A name is matched as a name and never looked up: looking it up here and again in the driver would
let DNS answer differently the second time. So a network admits only hosts written as addresses.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_SEPARATORS = re.compile(r"[\s,]+")


class HostRefused(ValueError):
    """Options whose hosts are not allowed, or cannot be told; the message says why."""


def _name(text: str) -> str | None:
    name = text.strip().lower().removesuffix(".")
    return name if _NAME.match(name) else None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class HostRules:
    """The hosts a daemon may connect to; build with ``parse``."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    socket_folders: tuple[str, ...] = ()
    abstract_sockets: frozenset[str] = frozenset()
    text: str = ""

    @classmethod
    def parse(cls, text: str, *, what: str) -> HostRules | None:
        """Rules from a comma-separated setting; None (every host) when it names none."""
        entries = [e for e in _SEPARATORS.split(text) if e]
        if not entries:
            return None
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        folders: list[str] = []
        abstract: set[str] = set()
        for entry in entries:
            if entry.startswith("/"):
                if ".." in entry.split("/") or "\x00" in entry:
                    raise HostRefused(f"{what}: socket folder {entry!r} must be a plain absolute path")
                folders.append(os.path.normpath(entry))
            elif entry.startswith("@") and len(entry) > 1:
                abstract.add(entry)
            elif entry.startswith("*."):
                suffix = _name(entry[2:])
                if suffix is None:
                    raise HostRefused(f"{what}: {entry!r} is not a wildcard over a host name")
                suffixes.append(suffix)
            elif (network := _network(entry)) is not None:
                networks.append(network)
            elif (name := _name(entry)) is not None:
                names.add(name)
            else:
                raise HostRefused(
                    f"{what}: {entry!r} is not a host name, *.domain, address, network or socket folder"
                )
        return cls(
            names=frozenset(names),
            suffixes=tuple(suffixes),
            networks=tuple(networks),
            socket_folders=tuple(folders),
            abstract_sockets=frozenset(abstract),
            text=", ".join(entries),
        )

    def allows(self, host: str) -> bool:
        if not host or host != host.strip() or "\x00" in host:
            return False
        if host.startswith("/"):
            if ".." in host.split("/"):
                return False
            folder = os.path.normpath(host)
            return any(folder == f or folder.startswith(f.rstrip("/") + "/") for f in self.socket_folders)
        if host.startswith("@"):
            return host in self.abstract_sockets
        address = _address(host)
        if address is not None:
            return any(address in network for network in self.networks)
        name = _name(host)
        if name is None:
            return False
        return name in self.names or any(name.endswith(f".{suffix}") for suffix in self.suffixes)


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text.removeprefix("[").removesuffix("]"), strict=False)
    except ValueError:
        return None


def postgres_hosts(dsn: str, *, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Every host a libpq connection string makes the driver try, as libpq reads it.

    The string is parsed by libpq itself (through psycopg); a ``hostaddr`` is where libpq connects,
    so it stands for its host. Missing keys come from ``PGHOST``/``PGHOSTADDR`` as libpq takes them.
    HostRefused when the string does not parse, names no host (libpq would use its compiled-in
    socket) or names a service file, which could name any host.
    """
    if "\x00" in dsn:
        raise HostRefused("dsn contains a NUL byte")
    try:  # the postgres extra: only daemons that use PostgreSQL have it
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise HostRefused("dsn cannot be read without psycopg (pip install '.[postgres]')") from None

    try:
        params: dict[str, Any] = conninfo_to_dict(dsn)
    except PsycopgError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HostRefused(f"dsn does not parse ({first})") from None
    if params.get("service") or environ.get("PGSERVICE"):
        # a service file's host and hostaddr fill in what the string leaves out: anything at all
        raise HostRefused("dsn uses a service (service= or PGSERVICE), whose file may name any host")
    hosts = _listed(params, "host", environ.get("PGHOST"))
    addresses = _listed(params, "hostaddr", environ.get("PGHOSTADDR"))
    if hosts and addresses and len(hosts) != len(addresses):
        raise HostRefused(f"dsn has {len(hosts)} host and {len(addresses)} hostaddr values")
    count = max(len(hosts), len(addresses))
    if count == 0:
        raise HostRefused("dsn names no host (libpq would use its default local socket); give host=")
    targets = []
    for index in range(count):
        address = addresses[index] if addresses else ""
        host = hosts[index] if hosts else ""
        target = address or host
        if not target:
            raise HostRefused(
                f"dsn host {index + 1} is empty (libpq would use its default local socket); name it"
            )
        targets.append(target)
    return targets


def _listed(params: Mapping[str, Any], key: str, default: str | None) -> list[str]:
    value = params.get(key)
    text = str(value) if value is not None else (default or "")
    return text.split(",") if text else []


def mysql_hosts(host: str) -> list[str]:
    """The host a MySQL connector connects to: PyMySQL takes one TCP host, nothing else."""
    if not host.strip() or "\x00" in host or "," in host:
        raise HostRefused(f"host {host!r} is not one host name or address")
    return [host]
