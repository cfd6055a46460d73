"""Webhooks and the events API against a real server and a real HTTP receiver on loopback, on SQLite and
PostgreSQL: volume and order, signatures, receiver outages, dead letters and replay, rotation, the API."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from scimgrip.events.sdk import EventsApiError, fetch_events, iter_events, verify_webhook
from tests.events.conftest import Receiver, add_webhook, api_key, run_cli, tenant
from tests.events.helpers import (
    assert_ordered_per_resource,
    create_group,
    create_user,
    first_arrivals,
    patch,
)
from tests.server.conftest import Server


def test_thousand_changes_arrive_in_order_signed_and_match_the_api(events_server: Server,
                                                                   receiver: Receiver) -> None:
    handle = tenant(events_server, "volume")
    hook = add_webhook(events_server, receiver.url, "volume")

    def work(n: int) -> None:   # 4 clients at once, each on its own 25 users and group
        with handle.client() as c:
            users = [create_user(c, f"user{n}-{i}") for i in range(25)]
            group = create_group(c, f"group{n}")
            for rnd in range(3):
                for uid in users:
                    patch(c, f"/Users/{uid}", {"op": "replace", "path": "title", "value": f"t{rnd}"})
                if rnd == 0:    # one PATCH adds 100 members (all 4 clients' users): one event per member
                    patch(c, f"/Groups/{group}", {"op": "add", "path": "members",
                                                  "value": [{"value": u} for u in everyone]})
            patch(c, f"/Groups/{group}", *[{"op": "remove", "path": f'members[value eq "{u}"]'}
                                           for u in everyone[::2]])

    everyone: list[str] = []
    with handle.client() as c:
        everyone += [create_user(c, f"shared{i}") for i in range(100)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    expected = 100 + 4 * (25 + 1 + 75 + 100 + 50)       # 1,104 events from 508 requests
    receiver.wait_for(lambda evs: len({e["id"] for e in evs}) >= expected, timeout=90)
    got = first_arrivals(receiver, hook["secret"])
    assert len(got) == expected
    assert_ordered_per_resource(got)
    assert sum(e["type"] == "group.member_added" for e in got) == 400
    assert sum(e["type"] == "group.member_removed" for e in got) == 200

    key = api_key(events_server, "volume")
    from_api = list(iter_events(events_server.base_url, key))
    assert [e["sequence"] for e in from_api] == list(range(1, expected + 1))
    assert sorted(got, key=lambda e: e["sequence"]) == from_api     # the same events, byte-for-byte payloads


def test_receiver_down_then_up_gets_everything(events_server: Server) -> None:
    receiver = Receiver()            # not started: connection refused
    tenant(events_server, "outage")
    hook = add_webhook(events_server, receiver.url, "outage")
    with events_server.tenants["outage"].client() as c:
        ids = [create_user(c, f"o{i}") for i in range(10)]
        for uid in ids:
            patch(c, f"/Users/{uid}", {"op": "replace", "path": "active", "value": False})
            patch(c, f"/Users/{uid}", {"op": "replace", "path": "active", "value": True})
    time.sleep(1.0)
    receiver.start()
    try:
        receiver.wait_for(lambda evs: len({e["id"] for e in evs}) >= 30)
        got = first_arrivals(receiver, hook["secret"])
        assert len(got) == 30
        assert_ordered_per_resource(got)
        log = json.loads(run_cli("webhook", "deliveries", hook["id"], "--json", database=events_server.database))
        assert {d["status"] for d in log} == {"delivered"} and max(d["attempts"] for d in log) > 1
    finally:
        receiver.stop()


def test_receiver_failing_forever_dead_letters_then_replay(events_server: Server, receiver: Receiver) -> None:
    receiver.status = 500
    tenant(events_server, "deadletter")
    hook = add_webhook(events_server, receiver.url, "deadletter", "--types", "user.created,user.updated")
    with events_server.tenants["deadletter"].client() as c:
        uid = create_user(c, "dl")
        patch(c, f"/Users/{uid}", {"op": "replace", "path": "title", "value": "x"})
        create_group(c, "filtered-out")
    db = events_server.database
    deadline = time.time() + 30
    dead: list[dict[str, object]] = []
    while time.time() < deadline and len(dead) < 2:
        time.sleep(0.2)
        dead = json.loads(run_cli("webhook", "deliveries", hook["id"], "--status", "dead", "--json", database=db))
    assert len(dead) == 2 and all(int(str(d["attempts"])) > 1 for d in dead)
    assert receiver.events() == []
    receiver.status = 204
    assert json.loads(run_cli("webhook", "replay", hook["id"], "--json", database=db)) == {"replayed": 2}
    receiver.wait_for(lambda evs: len(evs) >= 2)
    got = first_arrivals(receiver, hook["secret"])
    assert [e["type"] for e in got] == ["user.created", "user.updated"]
    # an admin can also resend everything from a sequence on
    out = run_cli("webhook", "replay", hook["id"], "--tenant", "deadletter", "--from-seq", "2", "--json",
                  database=db)
    assert json.loads(out) == {"replayed": 1}
    receiver.wait_for(lambda evs: len(evs) >= 3)


def test_secret_rotation_signs_with_both(events_server: Server, receiver: Receiver) -> None:
    tenant(events_server, "rotation")
    hook = add_webhook(events_server, receiver.url, "rotation")
    db = events_server.database
    new = json.loads(run_cli("webhook", "rotate-secret", hook["id"], "--json", database=db))["secret"]
    with events_server.tenants["rotation"].client() as c:
        create_user(c, "r1")
    receiver.wait_for(lambda evs: len(evs) >= 1)
    r = receiver.received[0]
    assert len(r.headers["webhook-signature"].split()) == 2
    verify_webhook(r.body, r.headers, hook["secret"])      # receivers not yet updated keep working
    verify_webhook(r.body, r.headers, new)
    listed = json.loads(run_cli("webhook", "list", "--tenant", "rotation", "--json", database=db))
    assert listed[0]["id"] == hook["id"] and listed[0]["deliveries"] == {"delivered": 1}
    run_cli("webhook", "remove", hook["id"], database=db)
    assert json.loads(run_cli("webhook", "list", "--tenant", "rotation", "--json", database=db)) == []


def test_events_api_auth_filter_and_long_poll(events_server: Server) -> None:
    base = events_server.base_url
    api = tenant(events_server, "api")
    tenant(events_server, "other")
    tenant_key = api_key(events_server, "api")
    other_key = api_key(events_server, "other")
    global_key = api_key(events_server)
    with api.client() as c:
        uid = create_user(c, "a1")
        patch(c, f"/Users/{uid}", {"op": "replace", "path": "active", "value": False})
    assert httpx.get(base + "/api/v1/events").status_code == 401
    assert httpx.get(base + "/api/v1/events", headers={"Authorization": "Bearer sgk_nope"}).status_code == 401
    assert httpx.get(base + "/api/v1/events", headers={"Authorization": f"Bearer {api.token}"}).status_code == 401
    with pytest.raises(EventsApiError) as exc:
        fetch_events(base, other_key, tenant="api")
    assert exc.value.status == 403
    with pytest.raises(EventsApiError) as exc:
        fetch_events(base, global_key)
    assert exc.value.status == 400
    with pytest.raises(EventsApiError) as exc:
        fetch_events(base, tenant_key, types=["user.exploded"])
    assert exc.value.status == 400
    page = fetch_events(base, global_key, tenant="api", types=["user.disabled"])
    assert [e["type"] for e in page["data"]] == ["user.disabled"] and page["next_cursor"] == "2"
    assert fetch_events(base, tenant_key)["data"] == fetch_events(base, global_key, tenant="api")["data"]
    keys = json.loads(run_cli("apikey", "list", "--json", database=events_server.database))
    run_cli("apikey", "revoke", next(k["id"] for k in keys if k["tenant"] == "other"), database=events_server.database)
    with pytest.raises(EventsApiError) as exc:
        fetch_events(base, other_key)
    assert exc.value.status == 401

    def later() -> None:
        time.sleep(0.5)
        with api.client() as c:
            create_user(c, "a2")

    threading.Thread(target=later).start()
    started = time.monotonic()
    page = fetch_events(base, global_key, tenant="api", after=2, wait=10)
    assert [e["type"] for e in page["data"]] == ["user.created"] and page["data"][0]["sequence"] == 3
    assert 0.3 < time.monotonic() - started < 5
    tail = run_cli("events", "tail", "api", "--after", "0", "--no-follow", "--json", database=events_server.database)
    lines = [json.loads(x) for x in tail.splitlines()]
    assert [e["sequence"] for e in lines] == [1, 2, 3] and lines[2] == page["data"][0]
