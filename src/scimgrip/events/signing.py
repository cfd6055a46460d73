"""Standard Webhooks signing (https://www.standardwebhooks.com, spec v1).

A message is signed over ``"{webhook-id}.{webhook-timestamp}.{body}"`` with HMAC-SHA256; the key is the
base64 part of a ``whsec_`` secret. ``webhook-signature`` is a space-separated list of ``v1,<base64>``
entries: one per live secret, so a receiver keeps verifying while a secret is rotated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 5 * 60   # seconds of clock skew accepted on webhook-timestamp (replay protection)


class WebhookVerificationError(Exception):
    """The request does not carry a valid, fresh Standard Webhooks signature."""


def generate_secret() -> str:
    """A new signing secret: ``whsec_`` + base64 of 24 random bytes (192 bits)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature entry, ``v1,<base64 HMAC-SHA256>``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), content, hashlib.sha256).digest()).decode()


def headers(msg_id: str, body: bytes, secrets_: Sequence[str], timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for a delivery, signed with every live secret."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(sign(s, msg_id, ts, body) for s in secrets_)}


def verify(body: bytes, headers_: Mapping[str, str], secret: str | Sequence[str], *,
           tolerance: int = DEFAULT_TOLERANCE, now: int | None = None) -> None:
    """Raise :class:`WebhookVerificationError` unless one ``v1`` signature matches one of ``secret``.

    ``headers_`` is looked up case-insensitively. The timestamp must be within ``tolerance`` seconds.
    """
    h = {k.lower(): v for k, v in headers_.items()}
    msg_id, ts_text, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not msg_id or not ts_text or not sigs:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(ts_text)
    except ValueError as exc:
        raise WebhookVerificationError("invalid webhook-timestamp") from exc
    current = int(time.time()) if now is None else now
    if abs(current - ts) > tolerance:
        raise WebhookVerificationError("webhook-timestamp outside the tolerance")
    keys = [secret] if isinstance(secret, str) else list(secret)
    expected = {sign(k, msg_id, ts, body) for k in keys}
    for candidate in sigs.split():
        if candidate.startswith("v1,") and any(hmac.compare_digest(candidate, e) for e in expected):
            return
    raise WebhookVerificationError("no matching signature")
