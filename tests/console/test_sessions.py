"""Session lifetimes in-process (a Starlette TestClient and a controllable clock, on SQLite and PostgreSQL):
idle timeout, absolute timeout, and sessions as server-side rows (only the id's hash is stored)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from scimgrip.console.accounts import Accounts
from scimgrip.server.app import create_app
from scimgrip.storage import open_storage
from scimgrip.storage.sql.web_store import WebStore
from scimgrip.storage.sql.web_tables import web_sessions
from scimgrip.web.config import WebConfig, default_cookie_secure

EMAIL, PASSWORD = "op@example.com", "correct horse battery staple"


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture()
def console(db_url: str) -> Iterator[tuple[TestClient, Clock, WebStore]]:
    storage = open_storage(db_url)
    store = WebStore(storage)
    Accounts(store).create_operator(EMAIL, PASSWORD)
    app = create_app(storage)
    clock = Clock()
    app.state.web_sessions.clock = clock
    try:
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            yield client, clock, store
    finally:
        storage.close()


def sign_in(client: TestClient) -> None:
    page = client.get("/console/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    r = client.post("/console/login", data={"csrf_token": token.group(1), "email": EMAIL, "password": PASSWORD},
                    follow_redirects=False)
    assert r.status_code == 303


def signed_in(client: TestClient) -> bool:
    return client.get("/console/tenants", follow_redirects=False).status_code == 200


def test_idle_timeout(console: tuple[TestClient, Clock, WebStore]) -> None:
    client, clock, _ = console
    sign_in(client)
    clock.now += dt.timedelta(minutes=29)
    assert signed_in(client)                    # use renews the idle window ...
    clock.now += dt.timedelta(minutes=29)
    assert signed_in(client)
    clock.now += dt.timedelta(minutes=31)       # ... 31 idle minutes end it
    assert not signed_in(client)


def test_absolute_timeout(console: tuple[TestClient, Clock, WebStore]) -> None:
    client, clock, _ = console
    sign_in(client)
    for _ in range(28):                         # busy all day (11 h 40 min) ...
        clock.now += dt.timedelta(minutes=25)
        assert signed_in(client)
    clock.now += dt.timedelta(minutes=25)       # ... and over 12 hours after sign-in
    assert not signed_in(client)


def test_only_the_hash_of_the_session_id_is_stored(console: tuple[TestClient, Clock, WebStore]) -> None:
    client, _, store = console
    sign_in(client)
    sid = client.cookies.get("scimgrip_console")
    assert sid and len(sid) >= 43
    with store.engine.connect() as conn:
        stored = [r.id_hash for r in conn.execute(select(web_sessions.c.id_hash))]
    assert hashlib.sha256(sid.encode()).hexdigest() in stored and sid not in stored


def test_cookie_secure_defaults() -> None:
    assert default_cookie_secure("https://scim.example.com")
    assert default_cookie_secure("http://scim.example.com")
    assert not default_cookie_secure("http://127.0.0.1:8000")
    assert not default_cookie_secure("http://localhost:8000")
    assert WebConfig().secure_for("http://127.0.0.1:8000/console")       # explicit True wins
    assert not WebConfig(cookie_secure=None).secure_for("http://127.0.0.1:8000/console")
    assert WebConfig(cookie_secure=None).secure_for("https://127.0.0.1:8000/console")
