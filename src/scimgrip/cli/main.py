"""The ``scimgrip`` command (typer): serve, tenants, tokens, database migrations.

Every command that opens the database applies pending migrations first (``open_storage`` does), so a
fresh SQLite file or PostgreSQL database is ready without a separate step.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from scimgrip.cli.admin import admin_app
from scimgrip.cli.backup import register as register_backup_commands
from scimgrip.cli.engine import register as register_engine_commands
from scimgrip.cli.events import apikey_app, events_app, webhook_app
from scimgrip.scim.errors import ScimError
from scimgrip.settings import Settings
from scimgrip.storage import open_storage, upgrade
from scimgrip.storage.base import Storage, TokenRecord
from scimgrip.tenancy.service import TenantService, tenant_url

app = typer.Typer(help="scimgrip — an Entra-ready multi-tenant SCIM 2.0 service provider.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
tenant_app = typer.Typer(help="Create, list and delete tenants.", no_args_is_help=True)
token_app = typer.Typer(help="Issue, list and revoke Secret Tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
app.add_typer(events_app, name="events")
app.add_typer(webhook_app, name="webhook")
app.add_typer(apikey_app, name="apikey")
app.add_typer(admin_app, name="admin")
register_engine_commands(app)
register_backup_commands(tenant_app, db_app)   # tenant export|import, db backup (cli/backup.py)

out = Console()
err = Console(stderr=True)

DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", envvar="SCIMGRIP_DATABASE_URL",
                                                 help="sqlite:///path.db or postgresql://… (default ./scimgrip.db)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", envvar="SCIMGRIP_PUBLIC_URL",
                                                help="Public base URL used to print Tenant URLs.")]


def _db(database: str | None) -> Storage:
    return open_storage(database or Settings().database_url)


def _base(base_url: str | None) -> str:
    if base_url:
        return base_url.rstrip("/")
    s = Settings()
    return (s.public_url or f"http://{s.host}:{s.port}").rstrip("/")


def _fail(exc: ScimError) -> None:
    err.print(f"[red]error:[/red] {exc.detail}")
    raise typer.Exit(code=1)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _token_json(t: TokenRecord) -> dict[str, Any]:
    return {"id": t.id, "created": _iso(t.created), "expires": _iso(t.expires), "revoked": _iso(t.revoked),
            "last_used": _iso(t.last_used), "description": t.description,
            "status": _token_status(t)}


def _token_status(t: TokenRecord) -> str:
    if t.revoked:
        return "revoked"
    if t.expires and t.expires <= dt.datetime.now(dt.UTC):
        return "expired"
    return "active"


# -- serve ------------------------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    database: DatabaseOpt = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    base_url: BaseUrlOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the SCIM server. On an empty database, create tenant 'default' and print its Tenant URL and token."""
    import uvicorn

    url = database or Settings().database_url
    os.environ["SCIMGRIP_DATABASE_URL"] = url
    os.environ["SCIMGRIP_WORKERS"] = str(workers)   # one process: the rate limit stays in memory
    if base_url:
        os.environ["SCIMGRIP_PUBLIC_URL"] = base_url
    storage = open_storage(url)
    try:
        if storage.count_tenants() == 0:
            tenant, issued = TenantService(storage).create_tenant("default")
            public = (base_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}")
            out.print("[bold]First start: created tenant 'default'.[/bold] Paste these into Entra ID "
                      "(Provisioning → Admin Credentials):")
            out.print(f"  Tenant URL:   {tenant_url(public, tenant.name)}", soft_wrap=True)
            out.print(f"  Secret Token: {issued.secret}", soft_wrap=True)
            out.print("  (the token is shown only now; issue another with 'scimgrip token issue default')")
            out.print(f"  Console:      {public}/console  (create an operator: scimgrip admin create EMAIL)",
                      soft_wrap=True)
            sys.stdout.flush()
    finally:
        storage.close()
    from scimgrip.server.limits import http_protocol  # header-size bound (httptools) / h11's own

    uvicorn.run("scimgrip.server.main:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, proxy_headers=True, access_log=False, http=http_protocol(),
                h11_max_incomplete_event_size=Settings().max_header_bytes)


# -- db ---------------------------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(database: DatabaseOpt = None) -> None:
    """Apply all pending migrations."""
    upgrade(database or Settings().database_url)
    out.print("database is at the latest schema revision")


# -- tenants ----------------------------------------------------------------------------------------------------
@tenant_app.command("create")
def tenant_create(name: str, database: DatabaseOpt = None, json_: JsonOpt = False,
                  base_url: BaseUrlOpt = None) -> None:
    """Create a tenant and its first Secret Token (shown once)."""
    storage = _db(database)
    try:
        tenant, issued = TenantService(storage).create_tenant(name)
    except ScimError as exc:
        _fail(exc)
        return
    finally:
        storage.close()
    url = tenant_url(_base(base_url), tenant.name)
    if json_:
        print(json.dumps({"tenant": tenant.name, "tenant_url": url, "token": issued.secret,
                          "token_id": issued.record.id}))
        return
    out.print(f"Created tenant [bold]{tenant.name}[/bold]")
    out.print(f"  Tenant URL:   {url}", soft_wrap=True)
    out.print(f"  Secret Token: {issued.secret}  (id {issued.record.id}; shown only now)", soft_wrap=True)


@tenant_app.command("list")
def tenant_list(database: DatabaseOpt = None, json_: JsonOpt = False, base_url: BaseUrlOpt = None) -> None:
    """List tenants."""
    storage = _db(database)
    try:
        tenants = storage.list_tenants()
    finally:
        storage.close()
    base = _base(base_url)
    if json_:
        print(json.dumps([{"tenant": t.name, "tenant_url": tenant_url(base, t.name), "created": _iso(t.created)}
                          for t in tenants]))
        return
    table = Table("tenant", "Tenant URL", "created")
    for t in tenants:
        table.add_row(t.name, tenant_url(base, t.name), _iso(t.created))
    out.print(table)


@tenant_app.command("delete")
def tenant_delete(name: str, database: DatabaseOpt = None, json_: JsonOpt = False,
                  yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
                  ) -> None:
    """Delete a tenant with all its users, groups, tokens and logs."""
    if not yes and not typer.confirm(f"Delete tenant {name!r} and ALL its users, groups and tokens?"):
        raise typer.Exit(code=1)
    storage = _db(database)
    try:
        TenantService(storage).delete_tenant(name)
    except ScimError as exc:
        _fail(exc)
    finally:
        storage.close()
    if json_:
        print(json.dumps({"deleted": name}))
    else:
        out.print(f"Deleted tenant {name}")


@tenant_app.command("extend")
def tenant_extend(name: str, schema_file: str, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Add custom extension schema(s) to a tenant from a JSON file (RFC 7643 §7 format)."""
    from pathlib import Path

    from scimgrip.scim.errors import InvalidValue
    from scimgrip.scim.schema import DEFAULT_REGISTRY

    try:
        raw = json.loads(Path(schema_file).read_text(encoding="utf-8"))
        items = raw if isinstance(raw, list) else [raw]
        DEFAULT_REGISTRY.with_extension_file(schema_file)  # validates
    except (OSError, ValueError, InvalidValue) as exc:
        err.print(f"[red]error:[/red] {schema_file}: {exc}")
        raise typer.Exit(code=1) from None
    storage = _db(database)
    try:
        tenant = TenantService(storage).require(name)
        settings = dict(tenant.settings or {})
        existing = [e for e in settings.get("extensions", []) if e["id"].lower()
                    not in {i["id"].lower() for i in items}]
        settings["extensions"] = existing + items
        storage.update_tenant_settings(tenant.id, settings)
    except ScimError as exc:
        _fail(exc)
    finally:
        storage.close()
    ids = [i["id"] for i in items]
    print(json.dumps({"tenant": name, "extensions": ids})) if json_ else out.print(f"{name}: extended with {ids}")


# -- tokens -----------------------------------------------------------------------------------------------------
@token_app.command("issue")
def token_issue(tenant: str, database: DatabaseOpt = None, json_: JsonOpt = False,
                expires_in: Annotated[float | None, typer.Option("--expires-in", help="Days until expiry.")] = None,
                description: Annotated[str, typer.Option(help="What the token is for.")] = "") -> None:
    """Issue another Secret Token (the previous ones stay valid until revoked: rotation without downtime)."""
    storage = _db(database)
    try:
        issued = TenantService(storage).issue_token(tenant, expires_in_days=expires_in, description=description)
    except ScimError as exc:
        _fail(exc)
        return
    finally:
        storage.close()
    if json_:
        print(json.dumps({"tenant": tenant, "token": issued.secret, **_token_json(issued.record)}))
        return
    out.print(f"Secret Token: {issued.secret}", soft_wrap=True)
    out.print(f"  id {issued.record.id}; expires {_iso(issued.record.expires) or 'never'}; shown only now")


@token_app.command("list")
def token_list(tenant: str, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """List a tenant's tokens (never the secrets)."""
    storage = _db(database)
    try:
        tokens = TenantService(storage).list_tokens(tenant)
    except ScimError as exc:
        _fail(exc)
        return
    finally:
        storage.close()
    if json_:
        print(json.dumps([_token_json(t) for t in tokens]))
        return
    table = Table("id", "status", "created", "expires", "last used", "description")
    for t in tokens:
        table.add_row(t.id, _token_status(t), _iso(t.created), _iso(t.expires) or "never",
                      _iso(t.last_used) or "never", t.description)
    out.print(table)


@token_app.command("revoke")
def token_revoke(tenant: str, token_id: str, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Revoke a token at once."""
    storage = _db(database)
    try:
        TenantService(storage).revoke_token(tenant, token_id)
    except ScimError as exc:
        _fail(exc)
    finally:
        storage.close()
    if json_:
        print(json.dumps({"tenant": tenant, "revoked": token_id}))
    else:
        out.print(f"Revoked {token_id}")


def main() -> None:  # pragma: no cover
    app()
