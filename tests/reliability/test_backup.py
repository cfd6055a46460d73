"""Backups: ``tenant export``/``tenant import`` round trips exactly (SQLite and PostgreSQL), refuses damaged
input atomically, and ``db backup`` taken during a write load opens and holds a consistent state.

Run: ``python -m pytest -q tests/reliability/test_backup.py``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from scimgrip.scim.projection import render
from scimgrip.scim.schema import DEFAULT_REGISTRY, ENTERPRISE_USER
from scimgrip.storage import open_storage
from scimgrip.storage.base import Change, MemberDelta, Storage
from tests.server.conftest import start_server, stop_server

SCIMGRIP = [sys.executable, "-m", "scimgrip"]
BASE = "https://scim.example/scim/v2/tenants/x"


def run(*args: str, database: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*SCIMGRIP, *args, "--database", database], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"scimgrip {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


def full_json(storage: Storage, tenant: str) -> dict[str, Any]:
    """Every user and group of a tenant as full SCIM JSON (members, groups, meta), by id."""
    t = storage.get_tenant(tenant)
    assert t is not None
    out: dict[str, Any] = {}
    for rt in ("User", "Group"):
        for res in storage.iter_all(t.id, rt):
            full = storage.get(t.id, rt, res.id)
            body = render(full, DEFAULT_REGISTRY, BASE)
            body["meta"]["created@us"] = full.created.isoformat()
            body["meta"]["lastModified@us"] = full.last_modified.isoformat()
            out[res.id] = body
    return out


def populate(storage: Storage, tenant: str) -> None:
    t = storage.create_tenant(tenant)
    users = []
    for i in range(40):
        doc: dict[str, Any] = {"userName": f"user{i}@example.com", "externalId": f"ext-{i}", "active": i % 3 != 0,
                               "name": {"givenName": f"Given{i}", "familyName": "Ünïcode 漢"},
                               "emails": [{"value": f"user{i}@example.com", "type": "work", "primary": True}]}
        if i % 2:
            doc[ENTERPRISE_USER] = {"employeeNumber": str(i), "manager": {"value": "m"}}
        users.append(storage.create(t.id, "User", doc).id)
    # some updates: versions > 1 and lastModified != created
    for uid in users[:10]:
        storage.update(t.id, "User", uid, lambda cur: Change({**cur.doc, "title": "Engineer"}))
    inner = storage.create(t.id, "Group", {"displayName": "inner", "externalId": "g-inner"}, users[:5]).id
    outer = storage.create(t.id, "Group", {"displayName": "outer"}, [*users[5:25], inner]).id
    storage.create(t.id, "Group", {"displayName": "empty"})
    # a group that names a group created after it (import must handle forward references)
    first = storage.create(t.id, "Group", {"displayName": "first"}, users[30:33]).id
    later = storage.create(t.id, "Group", {"displayName": "later"}, users[33:36]).id
    storage.update(t.id, "Group", first, lambda cur: Change(cur.doc, MemberDelta(add=(later, outer))))


def test_export_import_round_trip(db_url: str, tmp_path: Path) -> None:
    storage = open_storage(db_url)
    try:
        populate(storage, "source")
        before = full_json(storage, "source")
    finally:
        storage.close()
    out = tmp_path / "source.jsonl"
    run("tenant", "export", "source", "--output", str(out), database=db_url)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["scimgripExport"] == 1
    assert json.loads(lines[-1]) == {"scimgripExportEnd": {"users": 40, "groups": 5}}
    assert len(lines) == 1 + 45 + 1

    run("tenant", "import", "restored", str(out), database=db_url)
    storage = open_storage(db_url)
    try:
        after = full_json(storage, "restored")
    finally:
        storage.close()
    assert after.keys() == before.keys()
    for rid, body in before.items():
        assert after[rid] == body, f"{rid} differs after the round trip"
    members = sum(len(b.get("members", [])) for b in before.values())
    assert members == 5 + 21 + 3 + 3 + 2
    print(f"round trip: {len(before)} resources, {members} memberships identical (ids, meta, versions)")


def test_import_refuses_damaged_or_occupied_targets(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'b.db'}"
    storage = open_storage(db)
    try:
        populate(storage, "source")
        storage.create_tenant("busy")
        busy = storage.get_tenant("busy")
        assert busy is not None
        storage.create(busy.id, "User", {"userName": "someone"})
    finally:
        storage.close()
    out = tmp_path / "e.jsonl"
    run("tenant", "export", "source", "-o", str(out), database=db)
    lines = out.read_text(encoding="utf-8").splitlines()

    # truncated (no end marker), a broken line, a member that is not in the file: nothing is imported
    damaged = {
        "truncated": lines[:30],
        "broken": [*lines[:10], lines[10][:-5], *lines[11:]],
        "dangling": [*lines[:-3], lines[-3].replace('"members":[{"value":"', '"members":[{"value":"zz'), *lines[-2:]],
    }
    for name, content in damaged.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(content) + "\n", encoding="utf-8")
        proc = run("tenant", "import", f"r-{name}", str(path), database=db, check=False)
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        assert "nothing was imported" in proc.stderr
    proc = run("tenant", "import", "busy", str(out), database=db, check=False)
    assert proc.returncode == 1 and "already has 1" in proc.stderr
    storage = open_storage(db)
    try:
        names = {t.name for t in storage.list_tenants()}
        assert names == {"source", "busy"}, names    # tenants made for a failed import are removed again
        busy = storage.get_tenant("busy")
        assert busy is not None
        assert [r.doc["userName"] for r in storage.iter_all(busy.id, "User")] == ["someone"]
    finally:
        storage.close()


def test_online_sqlite_backup_during_write_load(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'live.db'}"
    srv = start_server(db, tmp_path, env={"SCIMGRIP_RATE_LIMIT_ENABLED": "false"})
    acked: list[str] = []
    stop = threading.Event()
    errors: list[str] = []
    try:
        tenant = srv.tenant("live")
        with tenant.client() as c:
            gid = c.post("/Groups", json={"displayName": "all"}).json()["id"]

        def writer(n: int) -> None:
            with tenant.client() as c:
                i = 0
                while not stop.is_set():
                    r = c.post("/Users", json={"userName": f"w{n}-{i}@example.com"})
                    if r.status_code != 201:
                        errors.append(r.text)
                        return
                    uid = r.json()["id"]
                    r = c.patch(f"/Groups/{gid}", json={
                        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "add", "path": "members", "value": [{"value": uid}]}]})
                    if r.status_code != 204:
                        errors.append(r.text)
                        return
                    acked.append(uid)
                    i += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        time.sleep(2)
        before = len(acked)
        backup = tmp_path / "copy.db"
        run("db", "backup", str(backup), database=db)
        after = len(acked)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors[:3]
    finally:
        stop.set()
        stop_server(srv)

    con = sqlite3.connect(backup)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        users = {r[0] for r in con.execute("SELECT id FROM resources WHERE resource_type = 'User'")}
        members = {r[0] for r in con.execute("SELECT member_id FROM group_members")}
        version = con.execute("SELECT version FROM resources WHERE resource_type = 'Group'").fetchone()[0]
    finally:
        con.close()
    # every write acknowledged before the backup began is in it; nothing acknowledged after it ended can be
    assert set(acked[:before]) <= users, "an acknowledged user is missing from the backup"
    assert before <= len(users) <= after + 3     # + writes in flight (one per writer) at the snapshot
    # a consistent state: memberships only of existing users, and the group's version counts its changes
    assert members <= users
    assert version == len(members) + 1
    storage = open_storage(f"sqlite:///{backup}")   # the copy opens as a scimgrip database
    try:
        live = storage.get_tenant("live")
        assert live is not None
        assert sum(1 for _ in storage.iter_all(live.id, "User")) == len(users)
    finally:
        storage.close()
    print(f"online backup under load: {len(users)} users in the copy ({before} acknowledged before, {after} after)")


def test_db_backup_refuses_postgresql(tmp_path: Path) -> None:
    proc = subprocess.run([*SCIMGRIP, "db", "backup", str(tmp_path / "x"), "--database",
                           "postgresql://postgres@127.0.0.1:5432/postgres"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "pg_dump" in proc.stderr
