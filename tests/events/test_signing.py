"""Standard Webhooks signing and the SDK's verification (https://www.standardwebhooks.com)."""

from __future__ import annotations

import json

import pytest

from scimgrip.events import signing
from scimgrip.events.config import EventSettings
from scimgrip.events.dispatcher import backoff
from scimgrip.events.sdk import WebhookVerificationError, verify_webhook

# The test vector of the Standard Webhooks specification (and of its reference libraries).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_specification_vector() -> None:
    assert signing.sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIG
    hdrs = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": SPEC_SIG}
    signing.verify(SPEC_BODY, hdrs, SPEC_SECRET, now=SPEC_TS + 10)


def test_roundtrip_rotation_and_rejections() -> None:
    old, new = signing.generate_secret(), signing.generate_secret()
    assert old.startswith("whsec_") and old != new
    body = json.dumps({"id": "evt_1", "type": "user.created"}).encode()
    hdrs = signing.headers("evt_1", body, [new, old])
    assert len(hdrs["webhook-signature"].split()) == 2
    assert verify_webhook(body, hdrs, old)["type"] == "user.created"
    assert verify_webhook(body.decode(), {k.upper(): v for k, v in hdrs.items()}, [new])["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify_webhook(body + b" ", hdrs, new)                      # tampered body
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify_webhook(body, {**hdrs, "webhook-id": "evt_2"}, new)  # id is signed
    with pytest.raises(WebhookVerificationError, match="no matching"):
        verify_webhook(body, hdrs, signing.generate_secret())
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        signing.verify(body, hdrs, new, now=int(hdrs["webhook-timestamp"]) + 3600)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(body, {"webhook-id": "evt_1"}, new)


def test_backoff_grows_and_is_capped() -> None:
    s = EventSettings(retry_base_seconds=5, retry_cap_seconds=3600)
    assert 2.5 <= backoff(1, s) <= 5
    assert 40 <= backoff(5, s) <= 80
    assert 1800 <= backoff(30, s) <= 3600
