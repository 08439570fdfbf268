"""Standard Webhooks signatures, checked against the specification's published test vector."""

from __future__ import annotations

import base64

import pytest

from cp.alerts.signing import SigningKeyError, sign, signing_key, verify

# the vector published with the Standard Webhooks reference libraries
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_published_test_vector_is_reproduced_exactly() -> None:
    key = signing_key(VECTOR_SECRET)
    assert sign(key, msg_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP, body=VECTOR_BODY) == VECTOR_SIGNATURE


def test_a_whsec_secret_is_its_base64_decoded_bytes() -> None:
    assert signing_key(VECTOR_SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_any_other_secret_is_its_utf8_bytes() -> None:
    assert signing_key("plain-secret") == b"plain-secret"


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_abcde"], ids=["not-base64", "bad-padding"])
def test_a_malformed_secret_is_refused_without_quoting_it(secret: str) -> None:
    with pytest.raises(SigningKeyError) as caught:
        signing_key(secret)
    assert secret.removeprefix("whsec_") not in str(caught.value)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(SigningKeyError, match="empty"):
        signing_key("")


def test_a_receiver_accepts_any_one_matching_signature_among_several() -> None:
    key = signing_key(VECTOR_SECRET)
    header = f"v1,bm9wZQ== {VECTOR_SIGNATURE}"
    assert verify(key, msg_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP, body=VECTOR_BODY, header=header)


@pytest.mark.parametrize(
    ("msg_id", "timestamp", "body"),
    [
        ("msg_other", VECTOR_TIMESTAMP, VECTOR_BODY),
        (VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY),
        (VECTOR_ID, VECTOR_TIMESTAMP, b'{"test": 2432232315}'),
    ],
    ids=["other-id", "other-timestamp", "tampered-body"],
)
def test_a_signature_does_not_verify_for_anything_else(msg_id: str, timestamp: int, body: bytes) -> None:
    key = signing_key(VECTOR_SECRET)
    assert not verify(key, msg_id=msg_id, timestamp=timestamp, body=body, header=VECTOR_SIGNATURE)
