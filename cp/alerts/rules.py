"""Alert rules as the configuration declares them (``alerts:``), and their normalized form."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from cp.durations import DURATION_HELP, MAX_DURATION_S, parse_duration
from cp.protocol import NAME_PATTERN

MAX_RULES = 500
MAX_SELECTED = 1_000
MAX_DURATION = MAX_DURATION_S
LABEL_TEXT = Field(min_length=1, max_length=64)


def _seconds(value: Any) -> float:
    """``30s`` / ``5m`` / ``4h`` / ``1d``, or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (parsed := parse_duration(value)) is not None:
        seconds = parsed
    else:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "…"
        raise ValueError(f"expected {DURATION_HELP}, got {shown}")
    if not 0 <= seconds <= MAX_DURATION:
        raise ValueError("a duration between 0s and 366d")
    return seconds


Duration = Annotated[float, BeforeValidator(_seconds)]


class RuleKind(enum.StrEnum):
    DAEMON_OFFLINE = "daemon_offline"
    DAEMON_DEGRADED = "daemon_degraded"
    RUN_FAILURES = "run_failures"
    RUN_DURATION = "run_duration"
    FRESHNESS = "freshness"
    QUEUE_BACKLOG = "queue_backlog"
    CONFIG_DRIFT = "config_drift"


DAEMON_KINDS = frozenset(
    {RuleKind.DAEMON_OFFLINE, RuleKind.DAEMON_DEGRADED, RuleKind.QUEUE_BACKLOG, RuleKind.CONFIG_DRIFT}
)
PIPELINE_KINDS = frozenset({RuleKind.RUN_FAILURES, RuleKind.RUN_DURATION, RuleKind.FRESHNESS})
# what each kind's threshold must hold (at least one of the keys)
THRESHOLD_KEYS: dict[RuleKind, tuple[str, ...]] = {
    RuleKind.DAEMON_OFFLINE: (),
    RuleKind.DAEMON_DEGRADED: (),
    RuleKind.RUN_FAILURES: ("count",),
    RuleKind.RUN_DURATION: ("longer_than",),
    RuleKind.FRESHNESS: ("within",),
    RuleKind.QUEUE_BACKLOG: ("depth", "oldest_age"),
    RuleKind.CONFIG_DRIFT: ("longer_than",),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertSettings(_Strict):
    group_wait: Duration = 30.0
    group_interval: Duration = 300.0
    repeat_interval: Duration = 4 * 3600.0
    group_by: list[Annotated[str, LABEL_TEXT]] = Field(default_factory=lambda: ["rule"], max_length=8)


class DaemonSelector(_Strict):
    names: list[Annotated[str, Field(pattern=NAME_PATTERN)]] | None = Field(
        default=None, max_length=MAX_SELECTED
    )
    labels: dict[Annotated[str, LABEL_TEXT], Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, max_length=32
    )


class PipelineSelector(_Strict):
    names: list[Annotated[str, Field(pattern=NAME_PATTERN)]] | None = Field(
        default=None, max_length=MAX_SELECTED
    )


class Threshold(_Strict):
    count: int | None = Field(default=None, ge=1, le=1_000)
    longer_than: Duration | None = None
    within: Duration | None = None
    depth: int | None = Field(default=None, ge=1, le=1_000_000_000)
    oldest_age: Duration | None = None


class RuleDecl(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: RuleKind
    for_: Duration = Field(default=0.0, alias="for")
    severity: Literal["critical", "warning", "info"] = "warning"
    daemons: DaemonSelector | None = None
    pipelines: PipelineSelector | None = None
    threshold: Threshold | None = None
    notify: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(default_factory=list, max_length=16)
    summary: str | None = Field(default=None, max_length=200)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _fits_kind(self) -> RuleDecl:
        needed = THRESHOLD_KEYS[self.kind]
        given = {
            k for k, v in (self.threshold.model_dump() if self.threshold else {}).items() if v is not None
        }
        if needed and not given & set(needed):
            raise ValueError(f"a {self.kind.value} rule needs threshold.{' or threshold.'.join(needed)}")
        extra = given - set(needed)
        if extra:
            raise ValueError(f"threshold.{sorted(extra)[0]} does not apply to a {self.kind.value} rule")
        if self.kind in DAEMON_KINDS and self.pipelines is not None:
            raise ValueError(f"a {self.kind.value} rule selects daemons, not pipelines")
        if self.kind in PIPELINE_KINDS and self.daemons is not None:
            raise ValueError(f"a {self.kind.value} rule selects pipelines, not daemons")
        return self


class AlertsDecl(_Strict):
    settings: AlertSettings = Field(default_factory=AlertSettings)
    rules: list[RuleDecl] = Field(default_factory=list, max_length=MAX_RULES)


def alert_problems(
    alerts: AlertsDecl, *, notifiers: set[str], daemons: set[str], pipelines: set[str]
) -> list[str]:
    """Names that point nowhere and duplicate rule names, as ``alerts.rules[i].x: ...`` lines."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, rule in enumerate(alerts.rules):
        where = f"alerts.rules[{i}]"
        if rule.name in seen:
            problems.append(f"{where}.name: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        for j, target in enumerate(rule.notify):
            if target not in notifiers:
                problems.append(
                    f"{where}.notify[{j}]: unknown notifier {target!r} (declare it under notifiers)"
                )
        for j, name in enumerate(rule.daemons.names or [] if rule.daemons else []):
            if name not in daemons:
                problems.append(f"{where}.daemons.names[{j}]: unknown daemon {name!r}")
        for j, name in enumerate(rule.pipelines.names or [] if rule.pipelines else []):
            if name not in pipelines:
                problems.append(f"{where}.pipelines.names[{j}]: unknown pipeline {name!r}")
    return problems


def normalize_alerts(alerts: AlertsDecl) -> dict[str, Any]:
    """The JSON form kept in a configuration version: seconds, rules sorted by name."""
    return {
        "settings": alerts.settings.model_dump(mode="json"),
        "rules": sorted(
            (r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in alerts.rules),
            key=lambda r: str(r["name"]),
        ),
    }
