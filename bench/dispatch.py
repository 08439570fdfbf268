"""Dispatch: commit and publish runs to 100 daemon queues, against raw ``send_task`` of as many messages.

Cases (each against the same baseline):

- ``cp dispatch (commit per run)``: one session per run — load the pipeline, ``create_run``, commit,
  publish — exactly what ``mycelial run PIPELINE`` does.
- ``cp dispatch (batched outbox, 100 runs per commit)``: a scheduler tick in which all 100 pipelines
  fire: 100 scheduled runs, one commit, then 100 publishes.

Baseline: ``app.send_task("daemon.run_job", args=[payload], queue=...)`` of the same number of
messages, with payloads built by ``create_run`` itself, to the same 100 queues on the same app and
broker. It is measured before and after the cases; the better of the two is used. Every message
is signed (docs/security.md), baseline included, as in production.

Signing's cost: the batched case with signing on against it with signing off, interleaved one
tick at a time so that the growing database and the machine's load fall on both alike; and
verifying: envelopes of real job payloads a daemon checks per second, as a share of the time one
dispatch takes (target: at most 10%).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bench.harness import Result, broker, progress, rate
from cp.celery_app import make_celery
from cp.config_file import parse_config_text
from cp.config_store import apply_document
from cp.db import create_schema, make_engine, session_scope
from cp.dispatch import CeleryDispatcher, Outgoing
from cp.messaging.install import guard_of
from cp.models import Pipeline, RunTrigger, utcnow
from cp.protocol import DAEMON_RUN_JOB, daemon_queue
from cp.runs import create_run, get_pipeline, mark_published, queue_run
from cp.security.cp_keys import ControlPlaneKeys
from cp.security.envelope import AUTH_HEADER
from cp.settings import Settings
from workers.trust import DaemonAuthenticator

RUNS = 5_000
RUNS_QUICK = 1_000
DAEMONS = 100
TICK = 100  # runs per commit in the batched case: one tick in which every pipeline fires
WARM_UP = 200

CASE_PER_RUN = "cp dispatch (commit per run)"
CASE_BATCHED = f"cp dispatch (batched outbox, {TICK} runs per commit)"
CASE_SIGNED = "batched dispatch, signing on (baseline: signing off)"
CASE_VERIFY = "verifying a job on the daemon (baseline: the 10% allowed)"


def daemon_name(index: int) -> str:
    return f"daemon-{index:03d}"


def pipeline_name(index: int) -> str:
    return f"pipeline-{index:03d}"


def config_text(daemons: int = DAEMONS) -> str:
    """A configuration file: ``daemons`` daemons, one SQLite connector pair, one pinned pipeline each."""
    lines = ["daemons:"]
    for i in range(daemons):
        lines += [f"  - name: {daemon_name(i)}", "    labels:", f"      site: site-{i:03d}"]
    lines += [
        "connectors:",
        "  - name: bench-source",
        "    kind: sqlite",
        "    path: /srv/bench/source.db",
        "  - name: bench-sink",
        "    kind: sqlite",
        "    path: /srv/bench/sink.db",
        "pipelines:",
    ]
    for i in range(daemons):
        lines += [
            f"  - name: {pipeline_name(i)}",
            "    source:",
            "      connector: bench-source",
            f"      table: orders_{i:03d}",
            "    destination:",
            "      connector: bench-sink",
            f"      table: orders_{i:03d}",
            "    mode: append",
            "    batch_size: 5000",
            # every run is queued at once: nothing consumes them, and a pipeline's next run would
            # otherwise wait for the previous one (its overlap capacity)
            "    overlap: allow",
            "    max_active_runs: 1000",
            f"    daemon: {daemon_name(i)}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Bench:
    """The control plane under test: a fresh SQLite database, a Celery app and the daemon queues."""

    settings: Settings
    engine: Engine
    app: Celery
    client: Any  # the broker's redis client, to count and delete queue keys
    key_names: Callable[[str], list[str]]
    pipelines: list[str]

    @property
    def queues(self) -> list[str]:
        return [daemon_queue(daemon_name(i)) for i in range(len(self.pipelines))]

    def queued(self) -> int:
        with self.client.pipeline() as pipe:
            for queue in self.queues:
                pipe.llen(queue)
            return sum(pipe.execute())

    def drop_messages(self) -> None:
        """Delete the daemon queues' message lists (bindings stay: the app has declared them)."""
        self.client.delete(*self.queues)

    def drop_everything(self) -> None:
        """Delete the daemon queues and their bindings, so nothing of this run stays in Redis."""
        keys = [key for queue in self.queues for key in self.key_names(queue)]
        self.client.delete(*keys)


def new_job(
    session: Session,
    pipeline: Pipeline,
    *,
    trigger: RunTrigger,
    now: datetime,
    expires: float,
    scheduled_for: datetime | None = None,
) -> Outgoing:
    """Create a run and queue it, as ``mycelial run`` and the scheduler do; return its job message."""
    run = create_run(session, pipeline, trigger=trigger, now=now, scheduled_for=scheduled_for)
    assert run is not None
    message = queue_run(session, run, pipeline, now=now, expires=expires)
    assert message is not None
    return message


def commit_per_run(bench: Bench, count: int) -> None:
    """``mycelial run``: a session per run, commit, publish, record the publish."""
    dispatcher = CeleryDispatcher(bench.app)
    names = bench.pipelines
    for i in range(count):
        now = utcnow()
        with session_scope(bench.engine) as session:
            pipeline = get_pipeline(session, names[i % len(names)])
            message = new_job(
                session, pipeline, trigger=RunTrigger.MANUAL, now=now, expires=bench.settings.run_job_expires
            )
        dispatcher.send(message)
        with session_scope(bench.engine) as session:
            mark_published(session, [str(message.payload["run_key"])], now=now)


def batched_outbox(bench: Bench, count: int, *, first_fire: datetime) -> None:
    """A scheduler tick: every pipeline fires, one commit for the lot, then publish each."""
    dispatcher = CeleryDispatcher(bench.app)
    for tick, start in enumerate(range(0, count, TICK)):
        fire = first_fire + timedelta(minutes=tick)
        created: list[Outgoing] = []
        now = utcnow()
        with session_scope(bench.engine) as session:
            pipelines = session.exec(select(Pipeline).order_by(col(Pipeline.name))).all()
            for pipeline in pipelines[: min(TICK, count - start)]:
                created.append(
                    new_job(
                        session,
                        pipeline,
                        trigger=RunTrigger.SCHEDULE,
                        now=now,
                        scheduled_for=fire,
                        expires=bench.settings.run_job_expires,
                    )
                )
        for message in created:
            dispatcher.send(message)
        with session_scope(bench.engine) as session:
            mark_published(session, [str(m.payload["run_key"]) for m in created], now=now)


def raw_send_task(bench: Bench, messages: list[Outgoing], count: int) -> None:
    """The baseline: Celery's own ``send_task``, no database."""
    for i in range(count):
        message = messages[i % len(messages)]
        bench.app.send_task(DAEMON_RUN_JOB, args=[message.payload], queue=message.queue)


def sample_messages(bench: Bench) -> list[Outgoing]:
    """One job message per pipeline, built by ``create_run`` and rolled back."""
    with Session(bench.engine) as session:
        messages = []
        for name in bench.pipelines:
            messages.append(
                new_job(
                    session,
                    get_pipeline(session, name),
                    trigger=RunTrigger.MANUAL,
                    now=utcnow(),
                    expires=bench.settings.run_job_expires,
                )
            )
        session.rollback()
    return messages


def measure(bench: Bench, label: str, count: int, work: Callable[[], object]) -> float:
    """Time ``work``, check that exactly ``count`` messages arrived, then drop them."""
    bench.drop_messages()
    per_second = rate(count, work)
    arrived = bench.queued()
    bench.drop_messages()
    if arrived != count:
        raise RuntimeError(f"{label}: {arrived} messages in the daemon queues, expected {count}")
    progress(f"  {label}: {per_second:,.0f}/s")
    return per_second


@contextmanager
def control_plane(broker_url: str, home: Path) -> Iterator[Bench]:
    """A fresh control plane with the generated configuration applied; its queues are emptied after."""
    started = time.perf_counter()
    settings = Settings(home=home)
    engine = make_engine(f"sqlite:///{home / 'mycelial.db'}")
    app = make_celery(settings, name="mycelial-bench", url=broker_url)
    try:
        create_schema(engine)
        document = parse_config_text(config_text(), source="<bench dispatch>")
        with session_scope(engine) as session:
            apply_document(
                session,
                document,
                author="bench",
                comment="dispatch benchmark",
                source="<bench>",
                now=utcnow(),
            )
        progress(f"  set-up: config with {DAEMONS} daemons applied in {time.perf_counter() - started:.1f}s")
        with app.connection_for_write() as connection:
            channel: Any = connection.default_channel  # kombu's Redis channel: the client and key names
            client = channel.client
            client.ping()

            def key_names(queue: str) -> list[str]:
                # the message list (one per priority step) and the bindings kombu declares for the queue
                lists = [queue] + [f"{queue}{channel.sep}{p}" for p in channel.priority_steps if p]
                bindings = [channel.keyprefix_queue % queue, channel.keyprefix_binding_permanent % queue]
                return lists + bindings

            bench = Bench(
                settings=settings,
                engine=engine,
                app=app,
                client=client,
                key_names=key_names,
                pipelines=[pipeline_name(i) for i in range(DAEMONS)],
            )
            bench.drop_everything()
            try:
                yield bench
            finally:
                bench.drop_everything()
    finally:
        app.close()
        engine.dispose()


def run(*, quick: bool) -> list[Result]:
    count = RUNS_QUICK if quick else RUNS
    progress(f"dispatch: {count:,} runs to {DAEMONS} daemon queues")
    with broker() as url, tempfile.TemporaryDirectory(prefix="mycb") as home:
        with control_plane(url, Path(home)) as bench:
            messages = sample_messages(bench)
            size = len(json.dumps(messages[0].payload))
            progress(f"  job payload: {size} bytes of JSON")
            # warm up: connection, producer pool, queue declarations, SQLAlchemy's statement cache
            measure(bench, "warm-up (cp)", WARM_UP, lambda: commit_per_run(bench, WARM_UP))
            measure(bench, "warm-up (raw)", WARM_UP, lambda: raw_send_task(bench, messages, WARM_UP))

            baseline_before = measure(
                bench, "baseline send_task", count, lambda: raw_send_task(bench, messages, count)
            )
            per_run = measure(bench, CASE_PER_RUN, count, lambda: commit_per_run(bench, count))
            first_fire = datetime(2026, 1, 1, tzinfo=UTC)
            batched = measure(
                bench, CASE_BATCHED, count, lambda: batched_outbox(bench, count, first_fire=first_fire)
            )
            baseline_after = measure(
                bench, "baseline send_task (again)", count, lambda: raw_send_task(bench, messages, count)
            )
            unsigned, signed = signing_cost(bench, count, first_fire=first_fire + timedelta(days=100))
            verify_per_second = verify_rate(bench, messages)
    baseline = max(baseline_before, baseline_after)
    progress(f"  baseline used: the better of {baseline_before:,.0f} and {baseline_after:,.0f} msgs/s")
    # what verifying adds on the daemon, as a share of the time dispatching one run takes
    verify_share = (1 / verify_per_second) / (1 / signed)
    progress(f"  verifying: {verify_per_second:,.0f} envelopes/s, {100 * verify_share:.1f}% of a dispatch")
    return [
        Result(case=CASE_PER_RUN, value=per_run, unit="runs/s", baseline=baseline),
        Result(case=CASE_BATCHED, value=batched, unit="runs/s", baseline=baseline),
        Result(case=CASE_SIGNED, value=signed, unit="runs/s", baseline=unsigned),
        Result(case=CASE_VERIFY, value=100 * verify_share, unit="% of a dispatch", baseline=10.0),
    ]


def signing_cost(bench: Bench, count: int, *, first_fire: datetime) -> tuple[float, float]:
    """Batched dispatch with signing off and on: ``(unsigned, signed)`` runs per second.

    The two are interleaved one tick (100 runs) at a time, in the order off-on, on-off, ... so
    that whatever drifts during the measurement (the database grows with every run, the machine's
    other load comes and goes) falls on both sides equally.
    """
    guard = guard_of(bench.app)
    signer = guard.signer
    assert signer is not None, "the bench app must sign, as in production"
    seconds = {False: 0.0, True: 0.0}
    rounds = count // TICK
    try:
        for round_ in range(rounds):
            for signing in (False, True) if round_ % 2 == 0 else (True, False):
                guard.signer = signer if signing else None
                fire = first_fire + timedelta(days=2 * round_ + signing)
                bench.drop_messages()
                started = time.perf_counter()
                batched_outbox(bench, TICK, first_fire=fire)
                seconds[signing] += time.perf_counter() - started
                arrived = bench.queued()
                if arrived != TICK:
                    raise RuntimeError(f"signing cost: {arrived} messages queued, expected {TICK}")
        bench.drop_messages()
    finally:
        guard.signer = signer
    done = rounds * TICK
    unsigned, signed = done / seconds[False], done / seconds[True]
    progress(f"  batched, signing off: {unsigned:,.0f}/s; on: {signed:,.0f}/s ({rounds} ticks each)")
    return unsigned, signed


def verify_rate(bench: Bench, messages: list[Outgoing]) -> float:
    """Envelopes a daemon verifies per second (signature, validity, nonce) on real job payloads."""
    signer = guard_of(bench.app).signer
    assert signer is not None
    keys = ControlPlaneKeys(bench.settings.home)
    count = 2_000
    signed = []
    for i in range(count):
        message = messages[i % len(messages)]
        task_id = f"verify-{i}"
        header = signer.header(
            task=DAEMON_RUN_JOB, task_id=task_id, queue=message.queue, payload=message.payload
        )
        signed.append((message, task_id, {AUTH_HEADER: header}))
    checkers = {
        m.queue: DaemonAuthenticator(queue=m.queue, trusted=keys.trusted, window_s=300) for m in messages
    }

    def verify_all() -> None:
        for message, task_id, headers in signed:
            refused = checkers[message.queue].check(
                task=DAEMON_RUN_JOB,
                task_id=task_id,
                queue=message.queue,
                headers=headers,
                payload=message.payload,
                redis=None,
            )
            if refused:
                raise RuntimeError(f"a valid envelope was refused: {refused}")

    return rate(count, verify_all)
