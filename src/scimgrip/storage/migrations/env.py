"""Alembic environment, driven from code (``scimgrip.storage.upgrade``), never from an alembic.ini.

The caller passes an open connection in ``config.attributes["connection"]`` that is already inside a
transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL with an advisory lock), so concurrent starts of several
workers migrate once and the others find the database at head.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from scimgrip.storage.sql.tables import metadata

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("scimgrip migrations run through scimgrip.storage.upgrade(url), not the alembic CLI")

context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
