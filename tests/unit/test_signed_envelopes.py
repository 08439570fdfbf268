"""Signed envelopes (cp/security/): what each side accepts, and why it refuses the rest."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cp.security.cp_auth import ControlPlaneAuthenticator, DaemonKeys, DaemonKeyView, Nonces
from cp.security.envelope import AUTH_HEADER, CP_SENDER, AuthError, daemon_sender, parse_auth
from cp.security.keys import Identity
from cp.security.signer import Signer
from cp.security.tokens import Token, TokenError, proof, proof_matches
from workers.trust import DaemonAuthenticator

CP_KEY = Identity.generate()
EDGE_KEY = Identity.generate()
QUEUE = "mycelial.daemon.edge-1"
JOB = {"v": 1, "run_key": "orders@1", "attempt": 1}


def headers(
    identity: Identity,
    *,
    by: str = CP_SENDER,
    task: str = "daemon.run_job",
    queue: str = QUEUE,
    payload: Any = JOB,
    task_id: str = "t1",
    clock: float | None = None,
    expires: str | None = None,
) -> dict[str, Any]:
    signer = Signer(lambda: identity, by=by, window_s=300, clock=(lambda: clock) if clock else time.time)
    return {
        AUTH_HEADER: signer.header(task=task, task_id=task_id, queue=queue, payload=payload, expires=expires)
    }


def daemon() -> DaemonAuthenticator:
    return DaemonAuthenticator(queue=QUEUE, trusted=lambda: {CP_KEY.key_id: CP_KEY.public}, window_s=300)


def check(auth: DaemonAuthenticator | ControlPlaneAuthenticator, h: dict[str, Any], **kw: Any) -> str | None:
    args = {"task": "daemon.run_job", "task_id": "t1", "queue": QUEUE, "payload": JOB, **kw}
    return auth.check(headers=h, redis=None, **args)


def test_a_daemon_accepts_a_job_signed_by_the_control_plane_once_processed_never_again() -> None:
    auth, h = daemon(), headers(CP_KEY)
    assert check(auth, h) is None
    assert check(auth, h) is None  # handed out again before it was acknowledged: a redelivery
    auth.processed(headers=h, redis=None)
    assert "replayed" in (check(auth, h) or "")


@pytest.mark.parametrize(
    ("make", "received", "reason"),
    [
        (lambda: {}, {}, "unsigned"),
        (lambda: headers(Identity.generate()), {}, "does not trust"),
        (lambda: headers(CP_KEY, task="daemon.probe"), {}, "bad signature"),
        (lambda: headers(CP_KEY, queue="mycelial.daemon.edge-2"), {}, "bad signature"),
        (lambda: headers(CP_KEY), {"payload": {**JOB, "run_key": "evil@1"}}, "bad signature"),
        (lambda: headers(CP_KEY, task_id="t2"), {}, "bad signature"),
        (
            lambda: headers(CP_KEY, queue="mycelial.daemon.edge-2"),
            {"queue": "mycelial.daemon.edge-2"},
            "not to this daemon's queue",
        ),
        (lambda: headers(EDGE_KEY, by=daemon_sender("edge-2")), {}, "only the control plane"),
        (lambda: headers(CP_KEY, clock=time.time() - 400), {}, "expired"),
        (lambda: headers(CP_KEY, clock=time.time() + 400), {}, "in the future"),
    ],
    ids=[
        "unsigned",
        "other-key",
        "task-swapped",
        "queue-swapped",
        "tampered",
        "id-swapped",
        "other-queue",
        "from-a-daemon",
        "expired",
        "future",
    ],
)
def test_a_daemon_refuses_every_forgery(make: Any, received: dict[str, Any], reason: str) -> None:
    assert reason in (check(daemon(), make(), **received) or "")


def test_a_message_with_its_own_expiry_stays_valid_until_then() -> None:
    later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3_600))
    h = headers(CP_KEY, clock=time.time() - 1_000, expires=later)
    assert check(daemon(), h) is None


def test_a_malformed_envelope_is_refused_with_one_line() -> None:
    for bad in (
        "x",
        {"v": 1},
        {**headers(CP_KEY)[AUTH_HEADER], "by": "root"},
        {**headers(CP_KEY)[AUTH_HEADER], "exp": 1},
    ):
        with pytest.raises(AuthError) as err:
            parse_auth(bad)
        assert "\n" not in str(err.value)


def control_plane(*, revoked: bool = False) -> ControlPlaneAuthenticator:
    view = DaemonKeyView(key_id=EDGE_KEY.key_id, public=EDGE_KEY.public, revoked=revoked)
    return ControlPlaneAuthenticator(
        daemon_keys=DaemonKeys(lambda name: view if name == "edge-1" else None, ttl=0),
        cp_keys=lambda: {CP_KEY.key_id: CP_KEY.public},
        nonces=Nonces(),
        window_s=300,
        daemon_queues=frozenset({"mycelial.cp"}),
    )


HELLO = {"v": 1, "name": "edge-1", "software_version": "1"}


def cp_check(
    auth: ControlPlaneAuthenticator,
    h: dict[str, Any],
    *,
    task: str = "cp.daemon_hello",
    queue: str = "mycelial.cp",
    payload: Any = HELLO,
) -> str | None:
    return auth.check(task=task, task_id="t1", queue=queue, headers=h, payload=payload, redis=None)


def edge_headers(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "by": daemon_sender("edge-1"),
        "task": "cp.daemon_hello",
        "queue": "mycelial.cp",
        "payload": HELLO,
    }
    args.update(kw)
    return headers(EDGE_KEY, **args)


def test_the_control_plane_accepts_a_daemon_speaking_for_itself_and_itself() -> None:
    auth = control_plane()
    assert cp_check(auth, edge_headers()) is None
    own = headers(CP_KEY, task="cp.run_event", queue="mycelial.cp", payload={"v": 1})
    assert cp_check(auth, own, task="cp.run_event", payload={"v": 1}) is None


@pytest.mark.parametrize(
    ("h", "kw", "reason"),
    [
        (
            lambda: edge_headers(payload={**HELLO, "name": "edge-2"}),
            {"payload": {**HELLO, "name": "edge-2"}},
            "in the name of 'edge-2'",
        ),
        (
            lambda: edge_headers(task="cp.check_daemon_health", payload=None),
            {"task": "cp.check_daemon_health", "payload": None},
            "may not send",
        ),
        (
            lambda: edge_headers(queue="mycelial.cp.control"),
            {"queue": "mycelial.cp.control"},
            "may not publish",
        ),
        (
            lambda: headers(
                EDGE_KEY,
                by=daemon_sender("edge-3"),
                task="cp.daemon_hello",
                queue="mycelial.cp",
                payload={**HELLO, "name": "edge-3"},
            ),
            {"payload": {**HELLO, "name": "edge-3"}},
            "is not enrolled",
        ),
        (
            lambda: headers(
                Identity.generate(),
                by=daemon_sender("edge-1"),
                task="cp.daemon_hello",
                queue="mycelial.cp",
                payload=HELLO,
            ),
            {},
            "its enrolled key is",
        ),
    ],
    ids=["other-daemon", "housekeeping", "control-queue", "not-enrolled", "old-key"],
)
def test_the_control_plane_refuses_a_daemon_beyond_itself(h: Any, kw: dict[str, Any], reason: str) -> None:
    refusal = cp_check(control_plane(), h(), **kw) or ""
    assert reason in refusal and "(claims to be daemon:" in refusal


def test_a_revoked_key_is_refused_and_a_processed_message_cannot_come_back() -> None:
    assert "revoked" in (cp_check(control_plane(revoked=True), edge_headers()) or "")
    auth, h = control_plane(), edge_headers()
    assert cp_check(auth, h) is None
    auth.processed(headers=h, redis=None)
    assert "replayed" in (cp_check(auth, h) or "")


def test_an_enrolment_token_proves_the_secret_without_carrying_it() -> None:
    token = Token.new(CP_KEY.public_text)
    again = Token.parse(token.text())
    assert again == token
    p = proof(token.secret_digest, name="edge-1", token_id=token.token_id, public_key=EDGE_KEY.public_text)
    assert token.secret.hex() not in p
    assert proof_matches(
        token.secret_digest, p, name="edge-1", token_id=token.token_id, public_key=EDGE_KEY.public_text
    )
    assert not proof_matches(
        token.secret_digest, p, name="edge-2", token_id=token.token_id, public_key=EDGE_KEY.public_text
    )
    for bad in ("", "myc1.", "myc2." + token.text()[5:], token.text()[:-3]):
        with pytest.raises(TokenError):
            Token.parse(bad)


def test_a_daemon_may_ask_for_its_own_config_again_and_only_its_own() -> None:
    own = {"v": 1, "name": "edge-1", "applied_config_version": 3}
    other = {**own, "name": "edge-2"}
    auth = control_plane()
    assert (
        cp_check(
            auth, edge_headers(task="cp.config_request", payload=own), task="cp.config_request", payload=own
        )
        is None
    )
    refusal = cp_check(
        control_plane(),
        edge_headers(task="cp.config_request", payload=other),
        task="cp.config_request",
        payload=other,
    )
    assert "in the name of 'edge-2'" in (refusal or "")
