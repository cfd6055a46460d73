"""Shared checks for the webhook tests."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import httpx

from scimgrip.events.sdk import verify_webhook
from tests.events.conftest import Receiver

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def create_user(c: httpx.Client, name: str) -> str:
    r = c.post("/Users", json={"schemas": [USER], "userName": name, "active": True})
    assert r.status_code == 201, r.text
    rid: str = r.json()["id"]
    return rid


def create_group(c: httpx.Client, name: str) -> str:
    r = c.post("/Groups", json={"schemas": [GROUP], "displayName": name})
    assert r.status_code == 201, r.text
    rid: str = r.json()["id"]
    return rid


def patch(c: httpx.Client, path: str, *ops: dict[str, Any]) -> None:
    r = c.patch(path, json={"schemas": [PATCH], "Operations": list(ops)})
    assert r.status_code in (200, 204), r.text


def first_arrivals(receiver: Receiver, secret: str | list[str]) -> list[dict[str, Any]]:
    """Received events with valid signatures, duplicates (at-least-once) dropped, in arrival order."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    with receiver.lock:
        received = list(receiver.received)
    for r in received:
        event = verify_webhook(r.body, r.headers, secret)
        assert r.headers["webhook-id"] == event["id"]
        if event["id"] not in seen:
            seen.add(event["id"])
            out.append(event)
    return out


def assert_ordered_per_resource(events: list[dict[str, Any]]) -> None:
    by_resource: dict[str, list[int]] = defaultdict(list)
    for e in events:
        by_resource[e["data"]["resource"]["id"]].append(e["sequence"])
    for rid, seqs in by_resource.items():
        assert seqs == sorted(seqs), f"resource {rid} out of order: {seqs}"
