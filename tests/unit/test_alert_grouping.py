"""Notices grouped like Alertmanager, on an injected clock: group wait, interval, repeat, resolved."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from cp.alerts.grouping import AlertView, LastNotice, PlannedNotice, group_key, plan_notices
from cp.alerts.rules import AlertSettings
from cp.models import AlertState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = AlertSettings()  # 30 s, 5 min, 4 h


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def firing(subject: str, *, fired: float = 0, rule: str = "edge-offline", **kw: object) -> AlertView:
    return AlertView(
        rule=rule,
        subject=subject,
        state=AlertState.FIRING,
        severity=str(kw.pop("severity", "critical")),
        summary=f"{subject} offline",
        labels={"daemon": subject.split(":")[-1], "site": str(kw.pop("site", "berlin"))},
        fired_at=at(fired),
        resolved_at=None,
        notify=("ops-hook",),
        muted=bool(kw.pop("muted", False)),
    )


def resolved(alert: AlertView, when: float) -> AlertView:
    return replace(alert, state=AlertState.RESOLVED, resolved_at=at(when))


class Outbox:
    """The notices sent so far, as the evaluator reads them back: the newest per group."""

    def __init__(self) -> None:
        self.sent: list[tuple[datetime, PlannedNotice]] = []
        self.last: dict[tuple[str, str], LastNotice] = {}

    def evaluate(
        self, alerts: list[AlertView], now: datetime, settings: AlertSettings = SETTINGS
    ) -> list[PlannedNotice]:
        due = plan_notices(alerts, last=self.last, settings=settings, now=now)
        for notice in due:
            self.sent.append((now, notice))
            self.last[(notice.group_key, notice.notifier)] = LastNotice.from_body(
                dedup_key=notice.dedup_key, created_at=now, body=notice.body
            )
        return due


def test_a_new_group_waits_group_wait_then_sends_its_alerts_together() -> None:
    outbox = Outbox()
    a, b = firing("daemon:edge-1", fired=0), firing("daemon:edge-2", fired=10)

    assert outbox.evaluate([a], at(29)) == []
    [notice] = outbox.evaluate([a, b], at(30))

    assert notice.status == "firing" and notice.body["sent_because"] == "new"
    assert [x["subject"] for x in notice.body["alerts"]] == ["daemon:edge-1", "daemon:edge-2"]
    assert notice.body["dedup_key"] == notice.dedup_key and notice.group_key == "rule=edge-offline"


def test_a_change_waits_group_interval_after_the_previous_notice() -> None:
    outbox = Outbox()
    a, b = firing("daemon:edge-1"), firing("daemon:edge-2", fired=60)
    outbox.evaluate([a], at(30))

    assert outbox.evaluate([a, b], at(100)) == []
    [notice] = outbox.evaluate([a, b], at(330))
    assert notice.body["sent_because"] == "changed"
    assert outbox.evaluate([a, b], at(700)) == []


def test_an_unchanged_firing_group_is_sent_again_after_repeat_interval() -> None:
    outbox = Outbox()
    a = firing("daemon:edge-1")
    outbox.evaluate([a], at(30))

    assert outbox.evaluate([a], at(30 + 4 * 3600 - 1)) == []
    [again] = outbox.evaluate([a], at(30 + 4 * 3600))
    assert again.body["sent_because"] == "repeat"
    assert again.dedup_key != outbox.sent[0][1].dedup_key


def test_a_resolved_alert_is_sent_once_at_the_next_interval() -> None:
    outbox = Outbox()
    a = firing("daemon:edge-1")
    outbox.evaluate([a], at(30))
    gone = resolved(a, 60)

    assert outbox.evaluate([gone], at(100)) == []
    [notice] = outbox.evaluate([gone], at(330))
    assert (notice.status, notice.body["sent_because"]) == ("resolved", "resolved")
    assert notice.body["alerts"][0]["resolved_at"] == at(60).isoformat()
    assert outbox.evaluate([gone], at(330 + 5 * 3600)) == []


def test_one_resolving_in_a_firing_group_is_listed_once_then_dropped() -> None:
    outbox = Outbox()
    a, b = firing("daemon:edge-1"), firing("daemon:edge-2")
    outbox.evaluate([a, b], at(30))

    [notice] = outbox.evaluate([a, resolved(b, 100)], at(330))
    assert notice.status == "firing"
    assert {(x["subject"], x["state"]) for x in notice.body["alerts"]} == {
        ("daemon:edge-1", "firing"),
        ("daemon:edge-2", "resolved"),
    }
    assert outbox.evaluate([a, resolved(b, 100)], at(700)) == []


def test_a_resolved_alert_never_notified_as_firing_sends_nothing() -> None:
    outbox = Outbox()

    assert outbox.evaluate([resolved(firing("daemon:edge-1"), 10)], at(3600)) == []


def test_muted_alerts_send_nothing_and_do_not_count_as_resolved() -> None:
    outbox = Outbox()
    a = firing("daemon:edge-1")
    assert outbox.evaluate([replace(a, muted=True)], at(3600)) == []

    outbox.evaluate([a], at(30))
    assert outbox.evaluate([replace(a, muted=True)], at(5 * 3600)) == []
    assert outbox.evaluate([replace(resolved(a, 100), muted=True)], at(6 * 3600)) == []


def test_a_refiring_alert_is_a_new_notice_after_its_resolution() -> None:
    outbox = Outbox()
    a = firing("daemon:edge-1")
    outbox.evaluate([a], at(30))
    outbox.evaluate([resolved(a, 60)], at(330))

    again = firing("daemon:edge-1", fired=400)
    assert outbox.evaluate([again], at(429)) == []
    [notice] = outbox.evaluate([again], at(430))
    assert notice.body["sent_because"] == "new"


def test_group_by_splits_groups_and_each_notifier_gets_its_own_notice() -> None:
    settings = AlertSettings(group_by=["rule", "site"])
    berlin, paris = firing("daemon:edge-1"), firing("daemon:edge-2", site="paris")
    two_targets = replace(paris, notify=("ops-hook", "log"))

    due = plan_notices([berlin, two_targets], last={}, settings=settings, now=at(30))

    assert sorted((n.group_key, n.notifier) for n in due) == [
        ("rule=edge-offline,site=berlin", "ops-hook"),
        ("rule=edge-offline,site=paris", "log"),
        ("rule=edge-offline,site=paris", "ops-hook"),
    ]
    assert group_key(berlin, ["severity", "subject"]) == "severity=critical,subject=daemon:edge-1"


def test_the_same_rows_give_the_same_dedup_key_whoever_evaluates() -> None:
    a = firing("daemon:edge-1")
    first = plan_notices([a], last={}, settings=SETTINGS, now=at(30))
    second = plan_notices([a], last={}, settings=SETTINGS, now=at(31))

    assert [n.dedup_key for n in first] == [n.dedup_key for n in second]


def test_the_notice_takes_the_most_severe_severity_of_its_alerts() -> None:
    due = plan_notices(
        [firing("daemon:edge-1", severity="info"), firing("daemon:edge-2", severity="warning")],
        last={},
        settings=SETTINGS,
        now=at(30),
    )

    assert due[0].body["severity"] == "warning"
