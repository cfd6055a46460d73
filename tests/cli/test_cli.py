"""The ``scimgrip`` command end to end (subprocesses, a real SQLite file; PostgreSQL for the tenant commands)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server.conftest import cli, free_port


def test_tenant_and_token_commands(database: str) -> None:
    created = json.loads(cli("tenant", "create", "contoso", "--json", "--base-url", "https://scim.example.com",
                             database=database).stdout)
    assert created["tenant"] == "contoso"
    assert created["tenant_url"] == "https://scim.example.com/scim/v2/tenants/contoso"
    assert created["token"].startswith("sgt_") and len(created["token"]) > 40
    dup = cli("tenant", "create", "contoso", database=database, check=False)
    assert dup.returncode == 1 and "error" in dup.stderr.lower()
    bad = cli("tenant", "create", "Not A Name!", database=database, check=False)
    assert bad.returncode == 1

    names = [t["tenant"] for t in json.loads(cli("tenant", "list", "--json", database=database).stdout)]
    assert "contoso" in names

    issued = json.loads(cli("token", "issue", "contoso", "--expires-in", "30", "--json", database=database).stdout)
    assert issued["expires"] and issued["status"] == "active" and issued["token"] != created["token"]
    tokens = json.loads(cli("token", "list", "contoso", "--json", database=database).stdout)
    assert {t["id"] for t in tokens} == {created["token_id"], issued["id"]}
    assert all(created["token"] not in json.dumps(t) for t in tokens)
    revoked = json.loads(cli("token", "revoke", "contoso", issued["id"], "--json", database=database).stdout)
    assert revoked == {"tenant": "contoso", "revoked": issued["id"]}
    assert cli("token", "revoke", "contoso", "tok_nope", database=database, check=False).returncode == 1

    # delete asks for confirmation; "n" keeps the tenant
    kept = cli("tenant", "delete", "contoso", database=database, check=False, input="n\n")
    assert kept.returncode != 0
    assert "contoso" in cli("tenant", "list", "--json", database=database).stdout
    cli("tenant", "delete", "contoso", database=database, input="y\n")
    assert "contoso" not in cli("tenant", "list", "--json", database=database).stdout
    assert cli("db", "upgrade", database=database).returncode == 0


def test_tokens_are_stored_only_as_hashes(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    url = f"sqlite:///{db}"
    created = json.loads(cli("tenant", "create", "hashy", "--json", database=url).stdout)
    issued = json.loads(cli("token", "issue", "hashy", "--json", database=url).stdout)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("h.db"))
    for secret in (created["token"], issued["token"]):
        assert secret.encode() not in raw
        assert secret.split("_", 1)[1].encode() not in raw


def test_serve_first_start_prints_tenant_url_and_working_token(tmp_path: Path) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'first.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "scimgrip", "serve", "--port", str(port), "--database", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        tenant_url = token = None
        deadline = time.time() + 60
        while time.time() < deadline and not (tenant_url and token):
            line = proc.stdout.readline() if proc.stdout else ""
            lines.append(line)
            if "Tenant URL:" in line:
                tenant_url = line.split("Tenant URL:", 1)[1].strip()
            if "Secret Token:" in line:
                token = line.split("Secret Token:", 1)[1].strip()
        assert tenant_url == f"http://127.0.0.1:{port}/scim/v2/tenants/default", lines
        assert token and token.startswith("sgt_")
        for _ in range(100):
            try:
                r = httpx.get(f"{tenant_url}/Users?filter=userName+eq+%22cf4d78e8-cc4f-4d5d-b8b9-183561c0104a%22",
                              headers={"Authorization": f"Bearer {token}"}, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["totalResults"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # second start: no new tenant, no token printed
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scimgrip", "serve", "--port", str(port), "--database", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "Secret Token" not in out
