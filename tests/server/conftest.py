"""A real ``scimgrip serve`` on loopback, against a real database (SQLite file or a fresh PostgreSQL database).

Each test module gets its own server process and its own database; the PostgreSQL database is created for
the module and dropped afterwards. Tenants are created through the real CLI (``tenant create --json``).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

PG_ADMIN_URL = os.environ.get("SCIMGRIP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SCIMGRIP = [sys.executable, "-m", "scimgrip"]


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, database: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*SCIMGRIP, *args, "--database", database], capture_output=True, text=True,
                          input=input, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"scimgrip {' '.join(args)} failed: {proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class TenantHandle:
    name: str
    url: str
    token: str
    token_id: str

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {token or self.token}",
                                     "Content-Type": "application/scim+json"})


@dataclass
class Server:
    base_url: str
    database: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    tenants: dict[str, TenantHandle] = field(default_factory=dict)

    def tenant(self, name: str) -> TenantHandle:
        if name not in self.tenants:
            data = json.loads(cli("tenant", "create", name, "--json", "--base-url", self.base_url,
                                  database=self.database).stdout)
            self.tenants[name] = TenantHandle(data["tenant"], data["tenant_url"], data["token"], data["token_id"])
        return self.tenants[name]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(database: str, tmp: Path, *, workers: int = 1, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    logf = log_path.open("wb")
    proc = subprocess.Popen([*SCIMGRIP, "serve", "--port", str(port), "--database", database,
                             "--workers", str(workers), "--log-level", "warning"],
                            stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log_path.read_text()}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return Server(base, database, proc, log_path)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start: {log_path.read_text()}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh database URL for one module: a new SQLite file, or a PostgreSQL database created and dropped."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'scimgrip.db'}"
        return
    if not pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} — PostgreSQL cases skipped")
    import psycopg

    name = f"scimgrip_api_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(database, tmp_path_factory.mktemp("server"))
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def acme(server: Server) -> TenantHandle:
    return server.tenant("acme")


@pytest.fixture()
def client(acme: TenantHandle) -> Iterator[httpx.Client]:
    with acme.client() as c:
        yield c


def uid() -> str:
    return secrets.token_hex(6)
