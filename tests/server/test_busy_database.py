"""A database that stays locked past the retries is a 503 with ``Retry-After``, never a 500, and nothing is stored.

SQLite with a 50 ms busy timeout (the shipped one is 30 s) and another process-level connection holding the write
lock: the POST waits, is retried, and then answers ``503`` with a SCIM error body (RFC 7644 §3.12, ``status`` a
string). Entra retries 5xx and honours ``Retry-After``. Once the lock is released, the same POST is a 201.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from scimgrip.server.app import create_app
from scimgrip.storage import open_storage
from scimgrip.storage.sql import dialects
from scimgrip.tenancy.service import TenantService

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def test_a_database_locked_past_the_retries_is_a_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dialects, "SQLITE_BUSY_TIMEOUT_MS", 50)
    monkeypatch.setenv("SCIMGRIP_RATE_LIMIT_ENABLED", "false")
    path = tmp_path / "busy.db"
    storage = open_storage(f"sqlite:///{path}")
    try:
        _tenant, issued = TenantService(storage).create_tenant("acme")
        app = create_app(storage)
        with TestClient(app, base_url="http://testserver") as client:
            headers = {"Authorization": f"Bearer {issued.secret}"}
            url = "/scim/v2/tenants/acme/Users"
            body = {"schemas": [USER], "userName": "while-locked"}
            holder = sqlite3.connect(path, timeout=5, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                r = client.post(url, json=body, headers=headers)
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"].startswith("application/scim+json")
            err = r.json()
            assert err["status"] == "503" and "nothing was stored" in err["detail"]
            found = client.get(url, params={"filter": 'userName eq "while-locked"'}, headers=headers).json()
            assert found["totalResults"] == 0
            assert client.post(url, json=body, headers=headers).status_code == 201
    finally:
        storage.close()
