"""Tenant export and import for backups, on the SQL backend: a consistent snapshot out, an atomic restore in.

* :func:`export_resources` streams every user, then every group with its members, from **one** read
  transaction (PostgreSQL ``REPEATABLE READ``; SQLite's WAL read snapshot), in batches of ``batch`` rows, so a
  tenant of any size is read with bounded memory and the export is a state that existed at one moment.
  (``Storage.iter_all`` reads each batch in its own transaction: fine for the engine, not for a backup.)
* :func:`import_resources` writes a stream of resources with their ids, ``meta.created``,
  ``meta.lastModified`` and ``meta.version`` preserved, in **one** write transaction: either the whole tenant
  is restored or nothing is. Resources come in a first pass; memberships in a second pass over the same input
  (nested groups may name a group that comes later), so nothing is held in memory. The tenant must have no
  users or groups. No outbox events are written: a restore is not a directory change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import func, insert, select

from scimgrip.scim.errors import InvalidValue
from scimgrip.storage.base import StoredResource
from scimgrip.storage.sql.dialects import WRITE
from scimgrip.storage.sql.repository import RES_COLUMNS, SqlStorage, _dumps, index_columns, storable, value_rows
from scimgrip.storage.sql.tables import resource_values, resources

RESOURCE_TYPES = ("User", "Group")


def export_resources(storage: SqlStorage, tenant_id: int, batch: int = 500) -> Iterator[StoredResource]:
    """Every user, then every group with members, from one snapshot; ``batch`` rows in memory at a time."""
    engine = storage.engine
    if storage.dialect == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    with engine.connect() as conn, conn.begin():
        for rt in RESOURCE_TYPES:
            after = 0
            while True:
                rows = conn.execute(select(*RES_COLUMNS).where(
                    resources.c.tenant_id == tenant_id, resources.c.resource_type == rt,
                    resources.c.pk > after).order_by(resources.c.pk).limit(batch)).all()
                if not rows:
                    break
                after = int(rows[-1].pk)
                yield from storage._with_relations(conn, tenant_id, rows, include_members=rt == "Group",
                                                   include_groups=False)
                if len(rows) < batch:
                    break


def count_resources(storage: SqlStorage, tenant_id: int) -> int:
    with storage.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(resources).where(
            resources.c.tenant_id == tenant_id)).scalar_one())


def import_resources(storage: SqlStorage, tenant_id: int, first_pass: Iterable[StoredResource],
                     second_pass: Iterable[StoredResource], batch: int = 500) -> dict[str, int]:
    """Restore resources (pass 1) and then memberships (pass 2: the same stream again) in one transaction.

    Raises ``InvalidValue`` if the tenant already has resources, a resource id repeats, or a member id is
    not in the stream; then nothing is written.
    """
    counts = {"User": 0, "Group": 0, "members": 0}
    with storage.engine.connect() as conn:
        conn.execution_options(**WRITE)
        with conn.begin():
            existing = conn.execute(select(func.count()).select_from(resources).where(
                resources.c.tenant_id == tenant_id)).scalar_one()
            if existing:
                raise InvalidValue(f"the tenant already has {existing} users/groups; import into an empty tenant")
            pending: list[tuple[dict[str, Any], StoredResource]] = []

            def flush() -> None:
                if not pending:
                    return
                res = conn.execute(insert(resources).returning(resources.c.pk, resources.c.id),
                                   [row for row, _ in pending])
                pks = {r.id: int(r.pk) for r in res}
                values = [{"resource_pk": pks[r.id], "tenant_id": tenant_id, "attr": a, "type_ci": t,
                           "value": v, "value_ci": vc}
                          for _, r in pending for a, t, v, vc in value_rows(storable(r.resource_type, r.doc))]
                if values:
                    conn.execute(insert(resource_values), values)
                pending.clear()

            for r in first_pass:
                if r.resource_type not in RESOURCE_TYPES:
                    raise InvalidValue(f"unknown resource type {r.resource_type!r}")
                doc = storable(r.resource_type, r.doc)
                pending.append(({"tenant_id": tenant_id, "resource_type": r.resource_type, "id": r.id,
                                 "created": _utc(r.created), "last_modified": _utc(r.last_modified),
                                 "version": r.version, "doc": _dumps(doc),
                                 **index_columns(r.resource_type, doc)}, r))
                counts[r.resource_type] += 1
                if len(pending) >= batch:
                    flush()
            flush()
            for r in second_pass:
                if r.resource_type == "Group" and r.members:
                    ids = list(dict.fromkeys(m.value for m in r.members))
                    storage._add_members(conn, tenant_id, r.id, ids)
                    counts["members"] += len(ids)
    return counts


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


__all__ = ["count_resources", "export_resources", "import_resources"]
