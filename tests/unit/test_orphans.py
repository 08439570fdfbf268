"""Finding the jobs an earlier process of a daemon took from its queue and never acknowledged."""

from __future__ import annotations

import json

import fakeredis

from cp.celery_app import unacked_options
from cp.settings import Settings
from workers.orphans import take_orphaned_jobs

QUEUE = "mycelial.daemon.edge-1"
OWN = unacked_options(Settings(), daemon="edge-1")
OTHER_DAEMON = unacked_options(Settings(), daemon="edge-2")
CONTROL_PLANE = unacked_options(Settings(), daemon=None)


def held(
    client: fakeredis.FakeRedis, keys: dict[str, object], tag: str, task_id: str, routing_key: str
) -> None:
    """What kombu's Redis transport stores for a message a consumer took and has not acknowledged."""
    message = {"body": "e30=", "headers": {"id": task_id, "task": "daemon.run_job"}, "properties": {}}
    client.hset(str(keys["unacked_key"]), tag, json.dumps([message, "", routing_key]))
    client.zadd(str(keys["unacked_index_key"]), {tag: 1_700_000_000.0})


def take(client: fakeredis.FakeRedis) -> list[str]:
    return take_orphaned_jobs(
        client,
        queue=QUEUE,
        unacked_key=str(OWN["unacked_key"]),
        unacked_index_key=str(OWN["unacked_index_key"]),
    )


def test_the_daemons_own_held_jobs_are_taken_and_named_and_nothing_else_is_touched() -> None:
    client = fakeredis.FakeRedis()
    held(client, OWN, "t1", "orders@manual-1", QUEUE)
    held(client, OWN, "t2", "orders@2026-06-01T12:00:00Z#2", QUEUE)
    held(client, OWN, "t3", "stray@manual-3", "mycelial.daemon.edge-2")
    client.hset(str(OWN["unacked_key"]), "junk", "not json")
    held(client, OTHER_DAEMON, "t4", "other@manual-9", "mycelial.daemon.edge-2")
    held(client, CONTROL_PLANE, "t5", "cp-task", "mycelial.cp")

    found = take(client)

    assert sorted(found) == ["orders@2026-06-01T12:00:00Z#2", "orders@manual-1"]
    assert sorted(client.hkeys(str(OWN["unacked_key"]))) == [b"junk", b"t3"]
    assert client.zrange(str(OWN["unacked_index_key"]), 0, -1) == [b"t3"]
    assert client.hkeys("unacked.daemon.edge-2") == [b"t4"] and client.hkeys("unacked.cp") == [b"t5"]


def test_a_job_held_in_another_daemons_hash_is_not_taken_for_this_one() -> None:
    client = fakeredis.FakeRedis()
    held(client, OTHER_DAEMON, "t1", "orders@manual-1", QUEUE)

    assert take(client) == []
    assert client.hkeys("unacked.daemon.edge-2") == [b"t1"]


def test_nothing_held_finds_nothing() -> None:
    assert take(fakeredis.FakeRedis()) == []
