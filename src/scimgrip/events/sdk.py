"""Helpers for the host application: verify a webhook, iterate events from a cursor.

Standard library only, so a host application can use them without the server's dependencies::

    from scimgrip.events.sdk import verify_webhook, iter_events

    event = verify_webhook(request.body, request.headers, "whsec_…")      # raises WebhookVerificationError
    for event in iter_events("https://scim.example.com", "sgk_…", after=cursor, follow=True):
        handle(event); save_cursor(event["sequence"])
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from scimgrip.events.signing import DEFAULT_TOLERANCE, WebhookVerificationError, verify

__all__ = ["EventsApiError", "WebhookVerificationError", "fetch_events", "iter_events", "verify_webhook"]


class EventsApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str | Sequence[str], *,
                   tolerance: int = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Check the Standard Webhooks signature of a delivery and return the parsed event.

    ``secret`` may be a list (during a rotation). Raises :class:`WebhookVerificationError`.
    """
    raw = body.encode() if isinstance(body, str) else body
    verify(raw, headers, secret, tolerance=tolerance)
    event: dict[str, Any] = json.loads(raw)
    return event


def fetch_events(base_url: str, api_key: str, *, after: int = 0, types: Sequence[str] = (),
                 tenant: str | None = None, limit: int = 100, wait: float = 0,
                 timeout: float = 90) -> dict[str, Any]:
    """One page of ``GET /api/v1/events``: ``{"data": […], "next_cursor": "…", "has_more": …}``."""
    params: dict[str, str] = {"after": str(after), "limit": str(limit)}
    if types:
        params["types"] = ",".join(types)
    if tenant:
        params["tenant"] = tenant
    if wait:
        params["wait"] = str(wait)
    url = base_url.rstrip("/") + "/api/v1/events?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=max(timeout, wait + 10)) as resp:  # noqa: S310
            page: dict[str, Any] = json.loads(resp.read())
            return page
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except ValueError:
            detail = ""
        raise EventsApiError(exc.code, detail or str(exc)) from exc


def iter_events(base_url: str, api_key: str, *, after: int = 0, types: Sequence[str] = (),
                tenant: str | None = None, follow: bool = False, wait: float = 30,
                batch: int = 500) -> Iterator[dict[str, Any]]:
    """Yield events in sequence order from cursor ``after``. With ``follow``, long-poll for new ones forever;
    otherwise stop when caught up. Persist ``event["sequence"]`` as the next ``after`` to resume."""
    cursor = after
    while True:
        try:
            page = fetch_events(base_url, api_key, after=cursor, types=types, tenant=tenant, limit=batch,
                                wait=wait if follow else 0)
        except (urllib.error.URLError, TimeoutError):
            if not follow:
                raise
            time.sleep(1)
            continue
        yield from page["data"]
        cursor = int(page["next_cursor"])
        if not page["has_more"] and not follow:
            return
