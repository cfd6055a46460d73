"""Open a storage backend from a database URL, migrating the schema to head first.

Migrations run programmatically (no alembic.ini): the scripts ship inside the package, and every process that
opens the database brings it to head, serialised by the database itself (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL advisory lock), so several workers can start at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from scimgrip.storage.base import Storage
from scimgrip.storage.sql.dialects import WRITE, make_engine

DEFAULT_URL = "sqlite:///./scimgrip.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x5C1A61   # advisory lock key held while migrating


def normalize_url(url: str | None = None) -> str:
    """None/"" → the default SQLite file; a bare path → SQLite; ``postgres(ql)://`` → psycopg 3."""
    if not url:
        return DEFAULT_URL
    url = url.strip()
    if "://" not in url:
        return "sqlite:///" + os.path.expanduser(url)
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg://" + rest
    return url


def _alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = conn
    return cfg


def _upgrade_engine(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execution_options(**WRITE)
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            command.upgrade(_alembic_config(conn), "heads")


def upgrade(url: str | None = None) -> None:
    """Bring the database at ``url`` to the newest schema revision."""
    engine = make_engine(normalize_url(url))
    try:
        _upgrade_engine(engine)
    finally:
        engine.dispose()


def open_storage(url: str | None = None) -> Storage:
    """A ready :class:`Storage` for ``url`` (see :func:`normalize_url`), migrated to head."""
    from scimgrip.storage.sql.repository import SqlStorage

    normalized = normalize_url(url)
    make_url(normalized)  # fail early on a malformed URL
    engine = make_engine(normalized)
    try:
        _upgrade_engine(engine)
    except BaseException:
        engine.dispose()
        raise
    return SqlStorage(normalized, engine)


__all__ = ["DEFAULT_URL", "normalize_url", "open_storage", "upgrade"]
