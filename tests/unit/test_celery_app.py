"""Specification of the broker options per consumer: own unacked keys, own redelivery delay."""

from __future__ import annotations

from cp.celery_app import make_celery
from cp.settings import Settings

SETTINGS = Settings(broker_url="redis://127.0.0.1:1/0")


def transport(daemon: str | None) -> dict[str, object]:
    options: dict[str, object] = make_celery(SETTINGS, daemon=daemon).conf.broker_transport_options
    return options


def test_the_control_plane_and_each_daemon_keep_held_messages_under_keys_of_their_own() -> None:
    key_names = ("unacked_key", "unacked_index_key", "unacked_mutex_key")
    keys = {who: tuple(transport(who)[k] for k in key_names) for who in (None, "edge-1", "edge-2")}

    assert keys[None] == ("unacked.cp", "unacked_index.cp", "unacked_mutex.cp")
    assert keys["edge-1"] == (
        "unacked.daemon.edge-1",
        "unacked_index.daemon.edge-1",
        "unacked_mutex.daemon.edge-1",
    )
    assert len({k for triple in keys.values() for k in triple}) == 9


def test_control_plane_messages_come_back_within_a_minute_and_daemon_jobs_after_hours() -> None:
    cp, daemon = transport(None), transport("edge-1")

    assert (cp["visibility_timeout"], cp["unacked_restore_interval"]) == (60.0, 5.0)
    assert (daemon["visibility_timeout"], daemon["unacked_restore_interval"]) == (6 * 3600.0, 10.0)
    assert cp["unacked_restore_throttle"] == daemon["unacked_restore_throttle"] == 1


def test_a_daemon_never_declares_the_control_planes_queues_and_its_pidbox_has_no_expiry() -> None:
    # declaring mycelial.cp binds it (SADD _kombu.binding.mycelial.cp), which a daemon's broker
    # user may not do; an expiring pidbox queue would make kombu run scripts on the binding
    # deadlines every consumer shares (cp/broker_acl.py)
    daemon = make_celery(SETTINGS, daemon="edge-1").conf
    cp = make_celery(SETTINGS).conf

    assert {q.name: q.no_declare for q in daemon.task_queues} == {
        "mycelial.cp": True,
        "mycelial.cp.control": True,
    }
    assert {q.name: q.no_declare for q in cp.task_queues} == {
        "mycelial.cp": False,
        "mycelial.cp.control": False,
    }
    assert daemon.control_queue_expires is None
    assert cp.control_queue_expires == 10.0  # Celery's default: control-plane pidbox queues expire
