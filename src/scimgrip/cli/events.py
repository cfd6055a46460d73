"""CLI for directory events: ``events tail``, ``webhook add|list|remove|replay|rotate-secret|deliveries``,
``apikey create|list|revoke`` (docs/events.md)."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from scimgrip.events.outbox import EVENT_TYPES
from scimgrip.events.signing import generate_secret
from scimgrip.settings import Settings
from scimgrip.storage import open_storage
from scimgrip.storage.base import Storage, Tenant
from scimgrip.storage.sql.events_store import Endpoint, EventStore

events_app = typer.Typer(help="Read the directory events of a tenant.", no_args_is_help=True)
webhook_app = typer.Typer(help="Webhook endpoints: add, list, remove, replay dead letters, rotate secrets.",
                          no_args_is_help=True)
apikey_app = typer.Typer(help="App API keys for the events API (per tenant or global).", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", envvar="SCIMGRIP_DATABASE_URL",
                                                 help="sqlite:///path.db or postgresql://… (default ./scimgrip.db)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant name; omit for a global one.")]


def _open(database: str | None) -> tuple[Storage, EventStore]:
    storage = open_storage(database or Settings().database_url)
    return storage, EventStore(storage)


def _die(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=1)


def _tenant(storage: Storage, name: str) -> Tenant:
    tenant = storage.get_tenant(name)
    if tenant is None:
        _die(f"no tenant {name!r}")
    assert tenant is not None
    return tenant


def _types(raw: str | None) -> list[str]:
    types = [t.strip() for t in (raw or "").split(",") if t.strip()]
    bad = [t for t in types if t not in EVENT_TYPES]
    if bad:
        _die(f"unknown event types {', '.join(bad)}; known: {', '.join(EVENT_TYPES)}")
    return types


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _names(storage: Storage) -> dict[int, str]:
    return {t.id: t.name for t in storage.list_tenants()}


# -- events -----------------------------------------------------------------------------------------------------
@events_app.command("tail")
def events_tail(
    tenant: str,
    after: Annotated[int | None, typer.Option(help="Start after this sequence (default: the last 10).")] = None,
    types: Annotated[str | None, typer.Option(help="Comma-separated event types.")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Keep waiting for new events.")] = True,
    database: DatabaseOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Print a tenant's events in sequence order, then follow new ones (like ``tail -f``)."""
    storage, store = _open(database)
    try:
        t = _tenant(storage, tenant)
        wanted = _types(types)
        cursor = after if after is not None else max(store.last_seq(t.id) - 10, 0)
        while True:
            found, cursor = store.list_events(t.id, cursor, wanted, 500)
            for e in found:
                if json_:
                    print(json.dumps(e.payload()), flush=True)
                else:
                    res = e.data.get("resource", {})
                    label = res.get("userName") or res.get("displayName") or res.get("id", "")
                    member = e.data.get("member", {}).get("value")
                    extra = f" member={member}" if member else ""
                    changed = e.data.get("changed_attributes")
                    extra += f" changed={','.join(changed)}" if changed else ""
                    out.print(f"{e.seq:>8} {e.occurred.isoformat()} {e.type:<22} {label}{extra}", highlight=False)
            if not found and not follow:
                return
            if not found:
                time.sleep(0.5)
    except KeyboardInterrupt:
        return
    finally:
        storage.close()


# -- webhooks ---------------------------------------------------------------------------------------------------
def _endpoint_json(ep: Endpoint, names: dict[int, str], counts: dict[str, int] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"id": ep.id, "url": ep.url, "tenant": names.get(ep.tenant_id) if ep.tenant_id else None,
                            "event_types": ep.event_types, "created": _iso(ep.created),
                            "description": ep.description,
                            "previous_secret_expires": _iso(ep.previous_secret_expires)}
    if counts is not None:
        data["deliveries"] = counts
    return data


@webhook_app.command("add")
def webhook_add(
    url: str,
    tenant: TenantOpt = None,
    types: Annotated[str | None, typer.Option(help="Comma-separated event types (default: all).")] = None,
    secret: Annotated[str | None, typer.Option(help="whsec_… secret to use (default: a new one).")] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    database: DatabaseOpt = None, json_: JsonOpt = False,
) -> None:
    """Register an endpoint; it gets every event committed from now on. Prints the signing secret once."""
    if not url.startswith(("http://", "https://")):
        _die("the URL must be http:// or https://")
    storage, store = _open(database)
    try:
        tenant_id = _tenant(storage, tenant).id if tenant else None
        ep = store.add_endpoint(url, secret or generate_secret(), tenant_id, _types(types), description)
        data = {**_endpoint_json(ep, _names(storage)), "secret": ep.secret}
        if json_:
            print(json.dumps(data))
        else:
            out.print(f"endpoint [bold]{ep.id}[/bold] → {ep.url} ({tenant or 'all tenants'})")
            out.print(f"signing secret (shown once): [bold]{ep.secret}[/bold]")
    finally:
        storage.close()


@webhook_app.command("list")
def webhook_list(tenant: TenantOpt = None, database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """List endpoints with their delivery counts per state."""
    storage, store = _open(database)
    try:
        tenant_id = _tenant(storage, tenant).id if tenant else None
        names = _names(storage)
        rows = [_endpoint_json(ep, names, store.counts(ep.id)) for ep in store.list_endpoints(tenant_id)]
        if json_:
            print(json.dumps(rows))
            return
        table = Table("id", "url", "tenant", "types", "pending", "delivered", "dead")
        for r in rows:
            c = r["deliveries"]
            table.add_row(r["id"], r["url"], r["tenant"] or "(all)", ",".join(r["event_types"]) or "(all)",
                          str(c.get("pending", 0)), str(c.get("delivered", 0)), str(c.get("dead", 0)))
        out.print(table)
    finally:
        storage.close()


@webhook_app.command("remove")
def webhook_remove(endpoint_id: str, database: DatabaseOpt = None) -> None:
    """Delete an endpoint and its delivery log."""
    storage, store = _open(database)
    try:
        if not store.remove_endpoint(endpoint_id):
            _die(f"no endpoint {endpoint_id!r}")
        out.print(f"removed {endpoint_id}")
    finally:
        storage.close()


@webhook_app.command("replay")
def webhook_replay(
    endpoint_id: str,
    delivery: Annotated[int | None, typer.Option(help="Replay this one delivery.")] = None,
    tenant: TenantOpt = None,
    from_seq: Annotated[int | None, typer.Option("--from-seq", help="With --tenant: resend from here.")] = None,
    database: DatabaseOpt = None, json_: JsonOpt = False,
) -> None:
    """Queue dead-lettered deliveries again (default), one delivery, or everything from a sequence on."""
    storage, store = _open(database)
    try:
        if store.get_endpoint(endpoint_id) is None:
            _die(f"no endpoint {endpoint_id!r}")
        if from_seq is not None and not tenant:
            _die("--from-seq needs --tenant")
        tenant_id = _tenant(storage, tenant).id if tenant else None
        n = store.replay(endpoint_id, delivery_id=delivery, tenant_id=tenant_id, from_seq=from_seq)
        print(json.dumps({"replayed": n}) if json_ else f"{n} deliveries queued again")
    finally:
        storage.close()


@webhook_app.command("rotate-secret")
def webhook_rotate(
    endpoint_id: str,
    grace_hours: Annotated[float, typer.Option(help="How long the old secret keeps signing.")] = 24.0,
    database: DatabaseOpt = None, json_: JsonOpt = False,
) -> None:
    """New signing secret; both secrets sign (two ``v1`` entries) until the grace period ends."""
    storage, store = _open(database)
    try:
        ep = store.rotate_secret(endpoint_id, generate_secret(), dt.timedelta(hours=grace_hours))
        if ep is None:
            _die(f"no endpoint {endpoint_id!r}")
        assert ep is not None
        if json_:
            print(json.dumps({"id": ep.id, "secret": ep.secret,
                              "previous_secret_expires": _iso(ep.previous_secret_expires)}))
        else:
            out.print(f"new secret (shown once): [bold]{ep.secret}[/bold]; the old one signs until "
                      f"{_iso(ep.previous_secret_expires)}")
    finally:
        storage.close()


@webhook_app.command("deliveries")
def webhook_deliveries(
    endpoint_id: str,
    status: Annotated[str | None, typer.Option(help="pending, delivered or dead.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show, newest first.")] = 50,
    database: DatabaseOpt = None, json_: JsonOpt = False,
) -> None:
    """The delivery log of an endpoint."""
    storage, store = _open(database)
    try:
        rows: list[dict[str, Any]] = [
            {"id": d.id, "sequence": d.seq, "event_id": d.event_id, "resource_id": d.resource_id,
             "status": d.status, "attempts": d.attempts, "last_status": d.last_status,
             "last_error": d.last_error, "created": _iso(d.created), "delivered": _iso(d.delivered),
             "next_attempt": _iso(d.next_attempt)}
                for d in store.list_deliveries(endpoint_id, status, limit)]
        if json_:
            print(json.dumps(rows))
            return
        table = Table("id", "seq", "event", "status", "attempts", "last", "error")
        for r in rows:
            table.add_row(str(r["id"]), str(r["sequence"]), r["event_id"], r["status"], str(r["attempts"]),
                          str(r["last_status"] or ""), r["last_error"] or "")
        out.print(table)
    finally:
        storage.close()


# -- app API keys -----------------------------------------------------------------------------------------------
@apikey_app.command("create")
def apikey_create(tenant: TenantOpt = None,
                  description: Annotated[str, typer.Option(help="Free text.")] = "",
                  database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """Create an app API key for the events API; without --tenant it reads every tenant. Shown once."""
    storage, store = _open(database)
    try:
        tenant_id = _tenant(storage, tenant).id if tenant else None
        key, secret = store.create_api_key(tenant_id, description)
        if json_:
            print(json.dumps({"id": key.id, "key": secret, "tenant": tenant}))
        else:
            out.print(f"API key [bold]{key.id}[/bold] ({tenant or 'global'}): [bold]{secret}[/bold]")
    finally:
        storage.close()


@apikey_app.command("list")
def apikey_list(database: DatabaseOpt = None, json_: JsonOpt = False) -> None:
    """List app API keys (never the keys themselves)."""
    storage, store = _open(database)
    try:
        names = _names(storage)
        rows = [{"id": k.id, "tenant": names.get(k.tenant_id) if k.tenant_id else None,
                 "created": _iso(k.created), "revoked": _iso(k.revoked), "description": k.description}
                for k in store.list_api_keys()]
        if json_:
            print(json.dumps(rows))
            return
        table = Table("id", "tenant", "created", "revoked", "description")
        for r in rows:
            table.add_row(r["id"], r["tenant"] or "(global)", r["created"], r["revoked"] or "", r["description"])
        out.print(table)
    finally:
        storage.close()


@apikey_app.command("revoke")
def apikey_revoke(key_id: str, database: DatabaseOpt = None) -> None:
    """Revoke an app API key."""
    storage, store = _open(database)
    try:
        if not store.revoke_api_key(key_id):
            _die(f"no active key {key_id!r}")
        out.print(f"revoked {key_id}")
    finally:
        storage.close()
