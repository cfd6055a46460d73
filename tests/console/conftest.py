"""Console fixtures: a real ``scimgrip serve`` per module and backend (from tests/server), an operator made with
the real CLI, and :class:`Browserless`, an httpx client that reads CSRF tokens out of forms like a browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import Server, cli, database, start_server, stop_server  # noqa: F401 - fixture

OPERATOR_EMAIL = "operator@example.com"
OPERATOR_PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browserless:
    """A cookie-keeping client that submits forms with the CSRF token of the last page it loaded."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
        self.csrf: str | None = None

    def get(self, path: str, **kw: Any) -> httpx.Response:
        r = self.http.get(path, **kw)
        m = _CSRF.search(r.text)
        if m:
            self.csrf = m.group(1)
        return r

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True,
             **kw: Any) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            assert self.csrf, "load a page with a form first"
            form["csrf_token"] = self.csrf
        r = self.http.post(path, data=form, **kw)
        m = _CSRF.search(r.text)
        if m:
            self.csrf = m.group(1)
        return r

    def close(self) -> None:
        self.http.close()


def sign_in_operator(b: Browserless) -> None:
    b.get("/console/login")
    r = b.post("/console/login", {"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console/tenants"


@pytest.fixture(scope="module")
def console_server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    with server_with_operator(database, tmp_path_factory.mktemp("console")) as srv:
        yield srv


@contextmanager
def server_with_operator(database_url: str, tmp: Path) -> Iterator[Server]:
    """A real ``scimgrip serve`` on ``database_url`` with the console operator created through the CLI."""
    srv = start_server(database_url, tmp)
    try:
        cli("admin", "create", OPERATOR_EMAIL, "--password-stdin", database=database_url,
            input=OPERATOR_PASSWORD + "\n")
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture()
def operator(console_server: Server) -> Iterator[Browserless]:
    b = Browserless(console_server.base_url)
    sign_in_operator(b)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture()
def anon(console_server: Server) -> Iterator[Browserless]:
    b = Browserless(console_server.base_url)
    try:
        yield b
    finally:
        b.close()
