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
