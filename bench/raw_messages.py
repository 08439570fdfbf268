"""Celery task messages built in bulk: one real publish is captured as a template, copies are pushed
straight onto the queue's Redis list. Simulates thousands of daemons from one process."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import redis
from celery import Celery

from cp.messaging.install import guard_of
from cp.security.envelope import AUTH_HEADER

SCRATCH_QUEUE = "mycelial.bench.template"


class RawTaskMessages:
    """Messages for task ``task`` on ``queue``, as kombu's Redis transport stores them."""

    def __init__(self, app: Celery, client: redis.Redis, *, task: str, queue: str) -> None:
        self._client = client
        self._queue = queue
        client.delete(SCRATCH_QUEUE)
        app.send_task(task, args=[{}], queue=SCRATCH_QUEUE, argsrepr="(bench)", kwargsrepr="{}")
        raw = client.rpop(SCRATCH_QUEUE)
        if raw is None:
            raise RuntimeError(f"no template message arrived on {SCRATCH_QUEUE}")
        self._template: dict[str, Any] = json.loads(raw)
        _, _, self._embed = json.loads(base64.b64decode(self._template["body"]))
        self._template["properties"]["delivery_info"]["routing_key"] = queue
        self._task = task
        self._signer = guard_of(app).signer  # each copy is signed afresh, as its publisher would

    def build(self, payload: dict[str, Any]) -> str:
        """One message carrying ``payload`` as the task's only argument, with fresh ids."""
        message = copy.deepcopy(self._template)
        task_id = str(uuid.uuid4())
        message["headers"].update(id=task_id, root_id=task_id)
        if self._signer is not None:
            message["headers"][AUTH_HEADER] = self._signer.header(
                task=self._task, task_id=task_id, queue=self._queue, payload=payload
            )
        message["properties"].update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
        body = json.dumps([[payload], {}, self._embed]).encode()
        message["body"] = base64.b64encode(body).decode()
        return json.dumps(message)

    def push(self, messages: list[str]) -> None:
        """Append ``messages`` to the queue in one round trip (consumers take from the other end)."""
        if messages:
            self._client.lpush(self._queue, *messages)
