"""Shared fixtures: database URLs for every backend (SQLite always, PostgreSQL when reachable) and a storage.

PostgreSQL: one fresh database ``scimgrip_test_<hex>`` per session, migrated once and dropped at the end;
each test starts from empty tables (TRUNCATE, much faster than a new database or schema per test).
Set ``SCIMGRIP_TEST_PG_URL`` to point elsewhere; when no server answers the PostgreSQL cases are skipped and
the terminal summary says so.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from scimgrip.storage import open_storage, upgrade
from scimgrip.storage.base import Storage

PG_URL = os.environ.get("SCIMGRIP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_PG_STATE: dict[str, str | None] = {"skip_reason": None}


def _libpq_url(url: str) -> str:
    """``postgresql+psycopg://…`` → ``postgresql://…`` for psycopg.connect."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this session (skips when none is reachable)."""
    admin_url = _libpq_url(PG_URL)
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        reason = f"PostgreSQL not reachable at {_shown(PG_URL)} — PostgreSQL cases skipped"
        _PG_STATE["skip_reason"] = f"{reason} ({type(exc).__name__})"
        pytest.skip(reason)
    name = f"scimgrip_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def truncate_all(url: str) -> None:
    """Empty every table of the test database except Alembic's version table."""
    with psycopg.connect(_libpq_url(url), autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
        if names:
            conn.execute("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL with clean state: a new SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scimgrip.db'}"
        return
    url: str = request.getfixturevalue("pg_database")
    truncate_all(url)
    yield url


@pytest.fixture
def storage(db_url: str) -> Iterator[Storage]:
    s = open_storage(db_url)
    try:
        yield s
    finally:
        s.close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Say it when the PostgreSQL cases were skipped. Under pytest-xdist the skips happen in the workers, so
    the controller finds them in the skip reports rather than in this process's state."""
    reason = _PG_STATE["skip_reason"]
    count = 0
    for report in terminalreporter.stats.get("skipped", []):
        text = str(getattr(report, "longrepr", ""))
        if "PostgreSQL not reachable" in text:
            count += 1
            reason = reason or text[text.index("PostgreSQL not reachable"):].split("'")[0].split('"')[0]
    if reason:
        terminalreporter.write_sep("-", "PostgreSQL")
        terminalreporter.write_line(f"{reason}" + (f" ({count} tests)" if count else ""))
    browser = [str(getattr(r, "longrepr", "")) for r in terminalreporter.stats.get("skipped", [])
               if "browser tests skipped" in str(getattr(r, "longrepr", ""))]
    if browser:   # tests/console/browser.py: no chromium or no playwright
        text = browser[0]
        terminalreporter.write_sep("-", "browser")
        terminalreporter.write_line(text[text.index("browser tests skipped"):].split("'")[0].split('"')[0])
