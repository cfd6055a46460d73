"""Alembic migrations of the scimgrip schema (run by ``scimgrip.storage.upgrade``)."""
