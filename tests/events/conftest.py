"""Fixtures for the event tests: a webhook receiver on loopback and a real server with fast retry timings.

The receiver is a real HTTP server (``ThreadingHTTPServer``) that records every request; it can answer 2xx,
answer 500, be slow, or be down (its socket closed), and come back on the same port.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from scimgrip.cli.main import app
from tests.conftest import truncate_all
from tests.server.conftest import (
    PG_ADMIN_URL,
    Server,
    TenantHandle,
    free_port,
    pg_available,
    start_server,
    stop_server,
)

# Test databases skip the disk flush: SQLite files live on tmpfs (/dev/shm) and the PostgreSQL test database
# runs with synchronous_commit=off. Durability against a killed scimgrip process (what these tests check) is
# unaffected: committed data is in the page cache / the PostgreSQL server either way.
SHM = Path("/dev/shm")


def _fast_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="scimgrip-events-", dir=SHM if SHM.is_dir() else None))


def _no_sync_commit(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Like the root ``db_url``, on the fast test databases."""
    if request.param == "sqlite":
        d = _fast_dir()
        yield f"sqlite:///{d / 'scimgrip.db'}"
        shutil.rmtree(d, ignore_errors=True)
        return
    url: str = request.getfixturevalue("pg_database")
    _no_sync_commit(url)
    truncate_all(url)
    yield url


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for one module (like ``tests/server``'s), on the fast test databases."""
    if request.param == "sqlite":
        d = _fast_dir()
        yield f"sqlite:///{d / 'scimgrip.db'}"
        shutil.rmtree(d, ignore_errors=True)
        return
    if not pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} — PostgreSQL cases skipped")
    name = f"scimgrip_events_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    _no_sync_commit(url)
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

FAST_ENV = {
    "SCIMGRIP_EVENTS_POLL_SECONDS": "0.05",
    "SCIMGRIP_EVENTS_RETRY_BASE_SECONDS": "0.1",
    "SCIMGRIP_EVENTS_RETRY_CAP_SECONDS": "0.3",
    "SCIMGRIP_EVENTS_RETRY_WINDOW_SECONDS": "5",
    "SCIMGRIP_EVENTS_LEASE_SECONDS": "2",
    "SCIMGRIP_EVENTS_TIMEOUT_SECONDS": "3",
}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class _HttpServer(ThreadingHTTPServer):
    request_queue_size = 128     # bursts of parallel deliveries must not be refused by a short listen backlog
    daemon_threads = True


class Receiver:
    """A webhook receiver on 127.0.0.1: ``status`` is what it answers, ``delay`` how long it takes."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 204
        self.delay = 0.0
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.delay:
                    time.sleep(receiver.delay)
                status = receiver.status
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self._httpd = _HttpServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.event for r in self.received]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate(self.events()):
                return
            time.sleep(0.05)
        raise AssertionError(f"receiver: condition not met in {timeout}s ({len(self.events())} received)")


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def events_server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(database, tmp_path_factory.mktemp("server"), env=FAST_ENV)
    try:
        yield srv
    finally:
        stop_server(srv)


def run_cli(*args: str, database: str) -> str:
    """The ``scimgrip`` command in-process (typer's runner: no interpreter start-up per call); its stdout."""
    result = CliRunner().invoke(app, [*args, "--database", database])
    assert result.exit_code == 0, f"scimgrip {' '.join(args)}: {result.output}"
    return result.stdout


def tenant(server: Server, name: str) -> TenantHandle:
    """Create a tenant with the real ``tenant create`` command (in-process) and remember it on the server."""
    if name not in server.tenants:
        data = json.loads(run_cli("tenant", "create", name, "--json", "--base-url", server.base_url,
                                  database=server.database))
        server.tenants[name] = TenantHandle(data["tenant"], data["tenant_url"], data["token"], data["token_id"])
    return server.tenants[name]


def add_webhook(server: Server, url: str, tenant: str | None = None, *extra: str) -> dict[str, Any]:
    args = ["webhook", "add", url, "--json", *extra]
    if tenant:
        args += ["--tenant", tenant]
    data: dict[str, Any] = json.loads(run_cli(*args, database=server.database))
    return data


def api_key(server: Server, tenant: str | None = None) -> str:
    args = ["apikey", "create", "--json"] + (["--tenant", tenant] if tenant else [])
    key: str = json.loads(run_cli(*args, database=server.database))["key"]
    return key
