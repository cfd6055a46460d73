"""Backups: ``scimgrip tenant export|import`` (SCIM JSON Lines, streamed) and ``scimgrip db backup`` (SQLite).

Export format (JSON Lines, UTF-8, one JSON object per line):

1. a header ``{"scimgripExport": 1, "tenant": …, "exported": …, "settings": {…}}`` (settings carry the
   tenant's extension schemas);
2. every User, then every Group, each as its full SCIM resource: ``schemas``, ``id``, the stored attributes
   verbatim (``externalId`` included), groups' ``members`` as ``{"value", "type"}``, and ``meta`` with
   ``resourceType``, ``created``/``lastModified`` (microsecond precision) and ``version`` (``W/"n"``);
3. a trailer ``{"scimgripExportEnd": {"users": n, "groups": m}}`` — an import refuses a file without it
   (a truncated backup).

Export reads one database snapshot and writes line by line; import reads the file twice (resources, then
memberships) and writes in one transaction. Neither holds the tenant in memory.

``db backup`` copies a live SQLite database with sqlite3's online backup API in one step (a read snapshot:
writers go on under WAL), checks the copy with ``PRAGMA integrity_check`` and renames it into place.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from scimgrip.scim.errors import ScimError
from scimgrip.scim.projection import etag, parse_etag
from scimgrip.scim.resource import normalize_resource
from scimgrip.scim.schema import CORE_GROUP, CORE_USER
from scimgrip.scim.tolerance import DEFAULT_POLICY
from scimgrip.service.scim import RegistryCache
from scimgrip.settings import Settings
from scimgrip.storage import normalize_url, open_storage
from scimgrip.storage.base import Member, StoredResource, Tenant
from scimgrip.storage.sql.backup import export_resources, import_resources
from scimgrip.storage.sql.repository import SqlStorage
from scimgrip.storage.sql.tables import format_utc, parse_utc
from scimgrip.tenancy.service import TenantService

FORMAT = 1
err = Console(stderr=True)
DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", envvar="SCIMGRIP_DATABASE_URL",
                                                 help="sqlite:///path.db or postgresql://… (default ./scimgrip.db)")]
CORE = {"User": CORE_USER, "Group": CORE_GROUP}


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=1)


def _sql(database: str | None) -> SqlStorage:
    storage = open_storage(database or Settings().database_url)
    if not isinstance(storage, SqlStorage):  # pragma: no cover - the only backend today
        storage.close()
        _fail("export/import needs the SQL backend")
    assert isinstance(storage, SqlStorage)
    return storage


# -- the record format -----------------------------------------------------------------------------------------
def to_record(res: StoredResource) -> dict[str, Any]:
    """A stored resource as one export line: full SCIM JSON, meta at microsecond precision."""
    out: dict[str, Any] = {"schemas": [CORE[res.resource_type],
                                       *(k for k in res.doc if k.lower().startswith("urn:"))],
                           "id": res.id, **res.doc}
    if res.resource_type == "Group":
        out["members"] = [{"value": m.value, "type": m.type} for m in (res.members or [])]
    out["meta"] = {"resourceType": res.resource_type, "created": format_utc(res.created),
                   "lastModified": format_utc(res.last_modified), "version": etag(res.version)}
    return out


def from_record(rec: Any, line: int) -> StoredResource:
    try:
        meta = rec["meta"]
        rt = meta["resourceType"]
        version = parse_etag(meta["version"])
        if rt not in CORE or version is None or not isinstance(rec["id"], str) or not rec["id"]:
            raise ValueError("bad resourceType, version or id")
        doc = {k: v for k, v in rec.items() if k not in ("schemas", "id", "meta", "members", "groups")}
        members = [Member(str(m["value"]), m.get("type")) for m in rec.get("members") or []] \
            if rt == "Group" else None
        return StoredResource(rec["id"], rt, doc, version, parse_utc(meta["created"]),
                              parse_utc(meta["lastModified"]), members=members)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"line {line}: not an exported resource ({exc})") from None


@contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    """stdout, or a temporary file renamed onto ``path`` only when the export is complete."""
    if path is None or path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_tenant(storage: SqlStorage, tenant: Tenant, out: IO[str]) -> dict[str, int]:
    header = {"scimgripExport": FORMAT, "tenant": tenant.name, "exported": format_utc(dt.datetime.now(dt.UTC)),
              "settings": tenant.settings or {}}
    out.write(json.dumps(header, ensure_ascii=False) + "\n")
    counts = {"users": 0, "groups": 0}
    for res in export_resources(storage, tenant.id):
        out.write(json.dumps(to_record(res), ensure_ascii=False, separators=(",", ":")) + "\n")
        counts["users" if res.resource_type == "User" else "groups"] += 1
    out.write(json.dumps({"scimgripExportEnd": counts}) + "\n")
    return counts


def read_export(path: Path, registries: RegistryCache, tenant: Tenant) -> Iterator[StoredResource]:
    """Stream the resources of an export file, validating each document against the tenant's schemas."""
    registry = registries.for_tenant(tenant)
    ended = False
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if n == 1:
                if not isinstance(rec, dict) or rec.get("scimgripExport") != FORMAT:
                    raise ValueError("line 1: not a scimgrip export header")
                continue
            if isinstance(rec, dict) and "scimgripExportEnd" in rec:
                ended = True
                continue
            if ended:
                raise ValueError(f"line {n}: data after the end marker")
            res = from_record(rec, n)
            norm = normalize_resource({"schemas": [CORE[res.resource_type]], **res.doc}, registry,
                                      res.resource_type, DEFAULT_POLICY)
            if norm.doc != res.doc:
                raise ValueError(f"line {n}: {res.resource_type} {res.id} is not a stored document")
            yield res
    if not ended:
        raise ValueError("the file has no end marker: the export is truncated")


def read_header(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        head = json.loads(fh.readline() or "null")
    if not isinstance(head, dict) or head.get("scimgripExport") != FORMAT:
        raise ValueError("line 1: not a scimgrip export header")
    return head


# -- commands ---------------------------------------------------------------------------------------------------
def tenant_export(name: str,
                  output: Annotated[str | None, typer.Option("--output", "-o",
                                                             help="File to write (default: stdout).")] = None,
                  database: DatabaseOpt = None) -> None:
    """Export a tenant's users, groups and memberships as SCIM JSON Lines (one consistent snapshot)."""
    storage = _sql(database)
    try:
        tenant = storage.get_tenant(name)
        if tenant is None:
            _fail(f"no tenant {name!r}")
            return
        with _output(output) as out:
            counts = export_tenant(storage, tenant, out)
    finally:
        storage.close()
    err.print(f"exported tenant {name}: {counts['users']} users, {counts['groups']} groups"
              + (f" → {output}" if output and output != "-" else ""))


def tenant_import(name: str, file: Annotated[Path, typer.Argument(help="A file written by 'tenant export'.")],
                  database: DatabaseOpt = None) -> None:
    """Restore an export into tenant NAME (created if absent; it must have no users or groups).

    Ids, externalId, meta.created/lastModified/version and memberships are kept. All or nothing.
    """
    try:
        header = read_header(file)
    except (OSError, ValueError) as exc:
        _fail(f"{file}: {exc}")
        return
    storage = _sql(database)
    issued = None
    try:
        service = TenantService(storage)
        tenant = storage.get_tenant(name)
        if tenant is None:
            tenant, issued = service.create_tenant(name)
        if header.get("settings") and not tenant.settings:
            tenant = storage.update_tenant_settings(tenant.id, header["settings"])
        registries = RegistryCache()
        counts = import_resources(storage, tenant.id, read_export(file, registries, tenant),
                                  read_export(file, registries, tenant))
    except (ScimError, ValueError, OSError, IntegrityError) as exc:
        detail = exc.detail if isinstance(exc, ScimError) else str(exc).splitlines()[0]
        if issued is not None:   # the tenant was made for this import: leave no trace
            TenantService(storage).delete_tenant(name)
        storage.close()
        _fail(f"import into {name!r} failed, nothing was imported: {detail}")
        return
    finally:
        storage.close()
    err.print(f"imported into tenant {name}: {counts['User']} users, {counts['Group']} groups, "
              f"{counts['members']} memberships")
    if issued is not None:
        err.print(f"created tenant {name}; Secret Token: {issued.secret} (shown only now)", soft_wrap=True)


def db_backup(output: Annotated[Path, typer.Argument(help="The backup file to write.")],
              database: DatabaseOpt = None,
              force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT.")] = False) -> None:
    """Online backup of a SQLite database (sqlite3 backup API) while the server runs; PostgreSQL: use pg_dump."""
    url = make_url(normalize_url(database or Settings().database_url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        _fail("db backup copies a SQLite database file; for PostgreSQL use pg_dump (e.g. pg_dump -Fc)")
        return
    source = Path(url.database)
    if not source.exists():
        _fail(f"no database at {source}")
    if output.exists() and not force:
        _fail(f"{output} exists (use --force to overwrite)")
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        src = sqlite3.connect(str(source), timeout=30)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)   # pages=-1: the whole database in one step, from one read snapshot
            dst.execute("PRAGMA journal_mode=DELETE")   # a self-contained single file
            check = dst.execute("PRAGMA integrity_check").fetchone()
            if not check or check[0] != "ok":
                raise RuntimeError(f"integrity check of the copy failed: {check}")
        finally:
            dst.close()
            src.close()
        os.replace(tmp, output)
    except (sqlite3.Error, RuntimeError, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        _fail(f"backup failed: {exc}")
    err.print(f"backed up {source} → {output} ({output.stat().st_size} bytes, integrity ok)")


def register(tenant_app: typer.Typer, db_app: typer.Typer) -> None:
    """Add ``tenant export``, ``tenant import`` and ``db backup`` (one line in ``cli/main.py``)."""
    tenant_app.command("export")(tenant_export)
    tenant_app.command("import")(tenant_import)
    db_app.command("backup")(db_backup)
