"""Parse and validate a declarative configuration file into a normalized document.

Validation is all-or-nothing: every problem is collected and reported as
``FILE: path.inside[0].file: what is wrong`` before anything is stored. The file itself is
untrusted input: its size, encoding, duplicate keys, alias expansion and depth are checked by
``cp.config`` before any of it is validated.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cp.alerts.notifier_spec import NotifierSpec, without_kind_tag
from cp.config.errors import ConfigError as ConfigError
from cp.config.errors import shown
from cp.config.limits import ConfigLimits
from cp.config.reading import decode_utf8, read_bounded
from cp.config.safe_yaml import load_yaml
from cp.config.tables import ConnectorRef, PipelineTables, table_problems
from cp.connectors import (
    CONNECTOR_KINDS,
    REFERENCE_HELP,
    SOURCE_ONLY_KINDS,
    literal_password_problem,
    static_path_problem,
)
from cp.protocol import NAME_PATTERN

SECRET_REF = re.compile(r"\$\{(env|file):([^}]+)\}")
ANY_REF = re.compile(r"\$\{[^}]*\}")
PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DaemonDecl(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict)


class ConnectorDecl(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=NAME_PATTERN)
    kind: str


class Endpoint(_Strict):
    connector: str
    table: str | None = None
    query: str | None = None


class RetryDecl(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: float = Field(default=10.0, gt=0, le=86_400)
    max_backoff: float = Field(default=600.0, gt=0, le=7 * 86_400)


class PipelineDecl(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    source: Endpoint
    destination: Endpoint
    mode: Literal["replace", "append", "incremental", "upsert"] = "replace"
    batch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    cursor_column: str | None = Field(default=None, min_length=1)
    key_columns: list[str] = Field(default_factory=list)
    schema_drift: Literal["add", "fail"] = "add"
    schedule: str | None = None
    timezone: str = "UTC"
    daemon: str | None = None
    labels: dict[str, str] | None = None
    enabled: bool = True
    catchup: Literal["latest", "all"] = "latest"
    max_catchup: int = Field(default=10, ge=1, le=10_000)
    overlap: Literal["skip", "queue", "allow"] = "skip"
    max_active_runs: int = Field(default=1, ge=1, le=1_000)
    retries: RetryDecl = Field(default_factory=RetryDecl)
    timeout: float | None = Field(default=None, gt=0, le=7 * 86_400)


class ConfigDocument(_Strict):
    daemons: list[DaemonDecl] = Field(default_factory=list)
    connectors: list[ConnectorDecl] = Field(default_factory=list)
    pipelines: list[PipelineDecl] = Field(default_factory=list)
    notifiers: list[NotifierSpec] = Field(default_factory=list, max_length=100)


def load_config_file(
    path: Path, *, limits: ConfigLimits | None = None, allow_empty: bool = False
) -> dict[str, Any]:
    """Read, parse and validate ``path``; return the normalized document or raise ConfigError."""
    limits = limits or ConfigLimits.defaults()
    data = read_bounded(path, max_bytes=limits.max_bytes)
    text = decode_utf8(data, source=str(path))
    return parse_config_text(text, source=str(path), limits=limits, allow_empty=allow_empty)


def parse_config_text(
    text: str, *, source: str, limits: ConfigLimits | None = None, allow_empty: bool = False
) -> dict[str, Any]:
    """Parse and validate configuration ``text``; an empty one is refused unless ``allow_empty``."""
    limits = limits or ConfigLimits.defaults()
    if len(text) > limits.max_bytes or len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise ConfigError(
            [f"{source}: larger than {limits.max_bytes} bytes (the limit MYCELIAL_CONFIG_MAX_BYTES)"]
        )
    raw = load_yaml(text, source=source, limits=limits)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: top level must be a mapping with daemons, connectors, pipelines"])
    try:
        doc = ConfigDocument.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            [f"{source}: {_loc(without_kind_tag(err['loc']))}: {_msg(err)}" for err in exc.errors()]
        ) from None
    if not (doc.daemons or doc.connectors or doc.pipelines or doc.notifiers or allow_empty):
        raise ConfigError(
            [f"{source}: empty configuration; it would remove everything (pass --allow-empty to do that)"]
        )
    problems = [f"{source}: {p}" for p in _semantic_problems(doc)]
    if problems:
        raise ConfigError(problems)
    return normalize(doc)


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not PLAIN_KEY.fullmatch(part):  # a key as the file wrote it: spaces, newlines, anything
            out += f"[{shown(part)}]"
        else:
            out += f".{part}" if out else part
    return out or "<top level>"


def _msg(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "string_pattern_mismatch":
        return f"invalid name {shown(err['input'])} (letters, digits, '_', '.', '-'; at most 63)"
    return str(err["msg"])


def _duplicates(kind: str, names: list[str]) -> Iterable[str]:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            yield f"{kind}[{index}].name: duplicate name {name!r}"
        seen.add(name)


def _semantic_problems(doc: ConfigDocument) -> list[str]:
    problems: list[str] = []
    problems += _duplicates("daemons", [d.name for d in doc.daemons])
    problems += _duplicates("connectors", [c.name for c in doc.connectors])
    problems += _duplicates("pipelines", [p.name for p in doc.pipelines])
    problems += _duplicates("notifiers", [n.name for n in doc.notifiers])

    for i, conn in enumerate(doc.connectors):
        problems += _connector_problems(f"connectors[{i}]", conn)

    connectors = {c.name for c in doc.connectors}
    kinds = {c.name: c.kind for c in doc.connectors}
    daemons = {d.name: d for d in doc.daemons}
    for i, pipe in enumerate(doc.pipelines):
        where = f"pipelines[{i}]"
        for end_name, end in (("source", pipe.source), ("destination", pipe.destination)):
            if end.connector not in connectors:
                problems.append(f"{where}.{end_name}.connector: unknown connector {end.connector!r}")
        file_source = kinds.get(pipe.source.connector) in SOURCE_ONLY_KINDS
        if not file_source and (pipe.source.table is None) == (pipe.source.query is None):
            problems.append(f"{where}.source: give exactly one of table or query")
        problems += _mode_problems(where, pipe)
        problems += _endpoint_reference_problems(where, pipe)
        if kinds.get(pipe.destination.connector) in SOURCE_ONLY_KINDS:
            problems.append(
                f"{where}.destination.connector: {pipe.destination.connector!r} is a "
                f"{kinds[pipe.destination.connector]} connector, which can only be a source"
            )
        if kinds.get(pipe.source.connector) in SOURCE_ONLY_KINDS and pipe.source.query is not None:
            problems.append(f"{where}.source.query: file sources take no query")
        if pipe.destination.query is not None:
            problems.append(f"{where}.destination.query: a destination takes a table, not a query")
        if not pipe.destination.table:
            problems.append(f"{where}.destination.table: required")
        if pipe.schedule is not None:
            problems += _schedule_problems(f"{where}.schedule", pipe.schedule)
        try:
            ZoneInfo(pipe.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a path
            problems.append(f"{where}.timezone: unknown time zone {shown(pipe.timezone)}")
        if (pipe.daemon is None) == (pipe.labels is None):
            problems.append(f"{where}: give exactly one of daemon or labels for placement")
        elif pipe.daemon is not None and pipe.daemon not in daemons:
            problems.append(f"{where}.daemon: unknown daemon {pipe.daemon!r} (declare it under daemons)")
        elif pipe.labels is not None and not any(
            matches_selector(d.labels, pipe.labels) for d in doc.daemons
        ):
            problems.append(f"{where}.labels: no declared daemon matches {pipe.labels}")
    problems += _table_problems(doc)
    return problems


def _table_problems(doc: ConfigDocument) -> list[str]:
    connectors = {
        c.name: ConnectorRef(name=c.name, kind=c.kind, options=c.model_extra or {}) for c in doc.connectors
    }
    pipelines = [
        PipelineTables(
            where=f"pipelines[{i}]",
            name=p.name,
            source_connector=p.source.connector,
            source_table=p.source.table,
            destination_connector=p.destination.connector,
            destination_table=p.destination.table,
        )
        for i, p in enumerate(doc.pipelines)
    ]
    return table_problems(connectors=connectors, pipelines=pipelines)


def _mode_problems(where: str, pipe: PipelineDecl) -> list[str]:
    problems = []
    if pipe.mode == "incremental" and not pipe.cursor_column:
        problems.append(f"{where}.cursor_column: required for mode incremental")
    if pipe.mode == "upsert" and not pipe.key_columns:
        problems.append(f"{where}.key_columns: required for mode upsert")
    if pipe.cursor_column and pipe.mode != "incremental":
        problems.append(f"{where}.cursor_column: only used with mode incremental (mode is {pipe.mode})")
    if pipe.max_active_runs > 1 and pipe.overlap != "allow":
        problems.append(f"{where}.max_active_runs: only used with overlap allow (overlap is {pipe.overlap})")
    if pipe.retries.max_backoff < pipe.retries.backoff:
        problems.append(f"{where}.retries.max_backoff: smaller than retries.backoff")
    if len(set(pipe.key_columns)) != len(pipe.key_columns):
        problems.append(f"{where}.key_columns: duplicate column names")
    return problems


def _schedule_problems(where: str, expression: str) -> list[str]:
    if not croniter.is_valid(expression):
        return [f'{where}: invalid cron "{expression}"']
    try:
        # valid syntax can still name a time that never comes, such as 31 February
        croniter(expression).get_next()
    except CroniterBadDateError:
        return [f'{where}: cron "{expression}" never fires']
    return []


def _connector_problems(where: str, conn: ConnectorDecl) -> list[str]:
    options_model = CONNECTOR_KINDS.get(conn.kind)
    if options_model is None:
        known = ", ".join(sorted(CONNECTOR_KINDS))
        return [f"{where}.kind: unknown connector kind {conn.kind!r} (known: {known})"]
    problems: list[str] = []
    options = conn.model_extra or {}
    try:
        options_model.model_validate(options)
    except ValidationError as exc:
        problems += [f"{where}.{_loc(err['loc'])}: {_msg(err)}" for err in exc.errors()]
    for key, value in _strings(options):
        problems += _secret_problems(f"{where}.{key}", value, kind=conn.kind, key=key)
    for key in sorted(options_model.path_options):
        path = options.get(key)
        problem = static_path_problem(path) if isinstance(path, str) and not ANY_REF.search(path) else None
        if problem:
            problems.append(f"{where}.{key}: connector {conn.name!r}: {problem}")
    return problems


def _strings(value: Any, path: str = "") -> Iterable[tuple[str, str]]:
    """Every string inside an option value, with its path (``columns.amount``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _secret_problems(where: str, value: str, *, kind: str, key: str) -> list[str]:
    """A malformed reference, a reference where the kind takes none, or a literal password."""
    secret_options = CONNECTOR_KINDS[kind].secret_options
    references = ANY_REF.findall(value)
    invalid = [ref for ref in references if not SECRET_REF.fullmatch(ref)]
    if invalid:
        return [f"{where}: invalid reference {ref} (use {REFERENCE_HELP})" for ref in invalid]
    if key in secret_options:
        return []  # the options model checked its literal passwords
    if references:
        takes = f"one only in {', '.join(sorted(secret_options))}" if secret_options else "none"
        return [f"{where}: a secret reference is not allowed here (a {kind} connector takes {takes})"]
    problem = literal_password_problem(value, what=key)
    return [f"{where}: {problem}"] if problem else []


def _endpoint_reference_problems(where: str, pipe: PipelineDecl) -> list[str]:
    """Table names and queries are never resolved: a reference there is a mistake, or a leak."""
    problems = []
    for end_name, end in (("source", pipe.source), ("destination", pipe.destination)):
        for field_name in ("table", "query"):
            text = getattr(end, field_name)
            if text and ANY_REF.search(text):
                problems.append(
                    f"{where}.{end_name}.{field_name}: a secret reference is not allowed here"
                    " (only in a connector's secret options)"
                )
    return problems


def matches_selector(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """True when ``labels`` carry every key/value of ``selector``."""
    return all(labels.get(k) == v for k, v in selector.items())


def normalize(doc: ConfigDocument) -> dict[str, Any]:
    """A canonical, JSON-ready document: sorted by name, defaults filled in; a section added after
    the first release appears only when the file has it, so documents stored before keep their
    checksum."""
    document = {
        "daemons": sorted(
            ({"name": d.name, "labels": dict(sorted(d.labels.items()))} for d in doc.daemons),
            key=lambda d: str(d["name"]),
        ),
        "connectors": sorted(
            (
                {
                    "name": c.name,
                    "kind": c.kind,
                    "options": dict(sorted((c.model_extra or {}).items())),
                }
                for c in doc.connectors
            ),
            key=lambda c: str(c["name"]),
        ),
        "pipelines": sorted((p.model_dump(mode="json") for p in doc.pipelines), key=lambda p: str(p["name"])),
    }
    if doc.notifiers:
        document["notifiers"] = sorted(
            (n.model_dump(mode="json") for n in doc.notifiers), key=lambda n: str(n["name"])
        )
    return document


def checksum(document: Any) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
