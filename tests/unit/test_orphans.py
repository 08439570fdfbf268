"""Finding the jobs an earlier process of a daemon took from its queue and never acknowledged."""

from __future__ import annotations

import json

import fakeredis

from workers.orphans import take_orphaned_jobs

QUEUE = "mycelial.daemon.edge-1"


def held(client: fakeredis.FakeRedis, tag: str, task_id: str, routing_key: str) -> None:
    """What kombu's Redis transport stores for a message a consumer took and has not acknowledged."""
    message = {"body": "e30=", "headers": {"id": task_id, "task": "daemon.run_job"}, "properties": {}}
    client.hset("unacked", tag, json.dumps([message, "", routing_key]))
    client.zadd("unacked_index", {tag: 1_700_000_000.0})


def test_the_daemons_own_held_jobs_are_taken_and_named_and_others_are_left() -> None:
    client = fakeredis.FakeRedis()
    held(client, "t1", "orders@manual-1", QUEUE)
    held(client, "t2", "orders@2026-06-01T12:00:00Z#2", QUEUE)
    held(client, "t3", "other@manual-9", "mycelial.daemon.edge-2")
    held(client, "t4", "cp-task", "mycelial.cp")
    client.hset("unacked", "junk", "not json")

    found = take_orphaned_jobs(client, queue=QUEUE)

    assert sorted(found) == ["orders@2026-06-01T12:00:00Z#2", "orders@manual-1"]
    assert sorted(client.hkeys("unacked")) == [b"junk", b"t3", b"t4"]
    assert sorted(client.zrange("unacked_index", 0, -1)) == [b"t3", b"t4"]


def test_nothing_held_finds_nothing() -> None:
    assert take_orphaned_jobs(fakeredis.FakeRedis(), queue=QUEUE) == []
