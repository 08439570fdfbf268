"""Which notices to send now, grouped like Alertmanager. Pure.

Alerts fall into groups by ``group_by`` (the rule, by default); each group is notified per
notifier. A new group waits ``group_wait`` after its first alert fired (so alerts that fire
together go out together); a change to a notified group (an alert firing or resolving) waits
``group_interval`` after the previous notice; an unchanged firing group is sent again after
``repeat_interval``. A resolved alert is sent once, in the group's next notice; muted alerts
(silenced or inhibited) are left out of notices altogether.

Exactly once: a notice's ``dedup_key`` is a hash of the notifier, the group, the previous notice's
key and the notice's content, so two evaluators that see the same rows compute the same key and
the outbox's unique index keeps one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cp.alerts.rules import AlertSettings
from cp.models import AlertState

SEVERITY_ORDER = ("critical", "warning", "info")
GROUP_KEY_MAX = 255  # AlertNotice.group_key
Identity = tuple[str, str, str]  # rule, subject, fired_at (ISO): one firing of one alert


@dataclass(frozen=True)
class AlertView:
    rule: str
    subject: str
    state: AlertState
    severity: str
    summary: str
    labels: dict[str, str]
    fired_at: datetime | None
    resolved_at: datetime | None
    notify: tuple[str, ...]
    muted: bool = False  # silenced or inhibited

    @property
    def identity(self) -> Identity:
        return (self.rule, self.subject, self.fired_at.isoformat() if self.fired_at else "")


@dataclass(frozen=True)
class LastNotice:
    """The newest notice of a group to a notifier: its key, when, and which firings it listed."""

    dedup_key: str
    created_at: datetime
    firing: frozenset[Identity]

    @classmethod
    def from_body(cls, *, dedup_key: str, created_at: datetime, body: dict[str, Any]) -> LastNotice:
        firing = frozenset(
            (str(a.get("rule")), str(a.get("subject")), str(a.get("fired_at") or ""))
            for a in body.get("alerts", [])
            if isinstance(a, dict) and a.get("state") == AlertState.FIRING.value
        )
        return cls(dedup_key=dedup_key, created_at=created_at, firing=firing)


@dataclass(frozen=True)
class PlannedNotice:
    dedup_key: str
    notifier: str
    group_key: str
    status: str
    body: dict[str, Any]


def group_key(alert: AlertView, group_by: list[str]) -> str:
    """``rule=edge-offline`` or, grouped by more, ``rule=x,site=berlin``; bounded like its column."""
    values = {"rule": alert.rule, "severity": alert.severity, "subject": alert.subject, **alert.labels}
    return ",".join(f"{key}={values.get(key, '')}" for key in group_by)[:GROUP_KEY_MAX]


def plan_notices(
    alerts: Iterable[AlertView],
    *,
    last: dict[tuple[str, str], LastNotice],
    settings: AlertSettings,
    now: datetime,
) -> list[PlannedNotice]:
    """The notices due now; ``last`` maps (group key, notifier) to that group's newest notice."""
    groups: dict[tuple[str, str], list[AlertView]] = {}
    for alert in alerts:
        if alert.muted:
            continue
        key = group_key(alert, settings.group_by)
        for notifier in alert.notify:
            groups.setdefault((key, notifier), []).append(alert)
    planned = []
    for (key, notifier), members in sorted(groups.items()):
        notice = _due(
            members, key=key, notifier=notifier, last=last.get((key, notifier)), settings=settings, now=now
        )
        if notice is not None:
            planned.append(notice)
    return planned


def _due(
    members: list[AlertView],
    *,
    key: str,
    notifier: str,
    last: LastNotice | None,
    settings: AlertSettings,
    now: datetime,
) -> PlannedNotice | None:
    firing = sorted((a for a in members if a.state is AlertState.FIRING), key=lambda a: a.identity)
    notified = last.firing if last is not None else frozenset()
    resolved = sorted(
        (a for a in members if a.state is AlertState.RESOLVED and a.identity in notified),
        key=lambda a: a.identity,
    )
    firing_ids = frozenset(a.identity for a in firing)
    if not firing and not resolved:
        return None
    if last is None or not last.firing:
        fired = [a.fired_at for a in firing if a.fired_at is not None]
        if not fired or now < min(fired) + timedelta(seconds=settings.group_wait):
            return None
        because = "new"
    elif firing_ids != last.firing or resolved:
        if now < last.created_at + timedelta(seconds=settings.group_interval):
            return None
        because = "changed" if firing else "resolved"
    elif now >= last.created_at + timedelta(seconds=settings.repeat_interval):
        because = "repeat"
    else:
        return None
    listed = firing + resolved
    dedup_key = _dedup_key(notifier, key, last.dedup_key if last else "", because, listed)
    status = AlertState.FIRING.value if firing else AlertState.RESOLVED.value
    body = {
        "dedup_key": dedup_key,
        "status": status,
        "group_key": key,
        "rule": ",".join(sorted({a.rule for a in listed})),
        "severity": min((a.severity for a in listed), key=_severity_rank),
        "alerts": [_alert_body(a) for a in listed],
        "sent_because": because,
    }
    return PlannedNotice(dedup_key=dedup_key, notifier=notifier, group_key=key, status=status, body=body)


def _severity_rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)


def _alert_body(alert: AlertView) -> dict[str, Any]:
    return {
        "rule": alert.rule,
        "subject": alert.subject,
        "state": alert.state.value,
        "summary": alert.summary,
        "labels": dict(sorted(alert.labels.items())),
        "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


def _dedup_key(notifier: str, key: str, previous: str, because: str, listed: list[AlertView]) -> str:
    content = [notifier, key, previous, because, [[*a.identity, a.state.value] for a in listed]]
    return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()
