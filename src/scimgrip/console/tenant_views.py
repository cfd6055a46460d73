"""Tenants (operator), and a tenant's overview: Tenant URL, Secret Tokens, Test Connection panel, setup links,
activity charts."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from scimgrip.console.accounts import Accounts
from scimgrip.console.charts import Series, count_into, daily_buckets, hourly_buckets, stacked_bars
from scimgrip.console.explain import explain
from scimgrip.console.pages import Ctx, Pages
from scimgrip.scim.errors import NotFound
from scimgrip.storage.base import Tenant, TokenRecord
from scimgrip.tenancy.service import TENANT_NAME, invalidate_tenant_caches, tenant_url

EXPIRY_CHOICES = (("", "Never"), ("30", "30 days"), ("90", "90 days"), ("180", "180 days"), ("365", "1 year"))
USER_EVENT_TYPES = ("user.created", "user.updated", "user.disabled", "user.enabled", "user.deleted")


def token_status(t: TokenRecord, now: dt.datetime) -> str:
    if t.revoked is not None:
        return "revoked"
    if t.expires is not None and t.expires <= now:
        return "expired"
    return "active"


class TenantViews:
    def __init__(self, pages: Pages, accounts: Accounts) -> None:
        self.pages = pages
        self.accounts = accounts

    def routes(self) -> list[Route]:
        v = self.pages.view
        return [
            Route("/tenants", v("operator", self.tenants), methods=["GET", "POST"]),
            Route("/t/{tenant}", v("tenant", self.overview), methods=["GET"]),
            Route("/t/{tenant}/tokens", v("tenant", self.issue_token), methods=["POST"]),
            Route("/t/{tenant}/tokens/{token_id}/revoke", v("tenant", self.revoke_token), methods=["POST"]),
            Route("/t/{tenant}/setup-links", v("tenant", self.create_setup_link), methods=["POST"]),
            Route("/t/{tenant}/connection", v("tenant", self.connection_panel), methods=["GET"]),
        ]

    # -- operator: tenants -------------------------------------------------------------------------------------
    def tenants(self, ctx: Ctx) -> Response:
        error = None
        name = ""
        if ctx.form is not None:
            name = ctx.field("name").lower()
            if not TENANT_NAME.match(name):
                error = ("Tenant names are 1–63 characters: lower-case letters, digits, '-' and '_', starting "
                         "with a letter or digit.")
            elif self.pages.storage.get_tenant(name) is not None:
                error = f"A tenant called {name!r} already exists."
            else:
                self.pages.storage.create_tenant(name)
                invalidate_tenant_caches()
                return RedirectResponse(f"/console/t/{quote(name)}?created=1", status_code=303)
        tenants = self.pages.storage.list_tenants()
        return self.pages.render(ctx, "tenants.html", status=400 if error else 200, tenants=tenants,
                                 error=error, name=name)

    # -- tenant overview ---------------------------------------------------------------------------------------
    def _overview(self, ctx: Ctx, status: int = 200, **values: Any) -> Response:
        tenant = ctx.tenant
        assert tenant is not None
        now = dt.datetime.now(dt.UTC)
        tokens = sorted(self.pages.storage.list_tokens(tenant.id), key=lambda t: t.created, reverse=True)
        links = self.pages.store.list_setup_links(tenant.id) if ctx.is_operator else []
        admins = self.pages.store.list_accounts("tenant_admin", tenant.id)
        return self.pages.render(
            ctx, "overview.html", status=status, now=now,
            tenant_url=tenant_url(self.pages.origin(ctx.request), tenant.name),
            tokens=[(t, token_status(t, now)) for t in tokens], expiry_choices=EXPIRY_CHOICES,
            links=links, admins=admins, connection=self._connection(tenant),
            charts=self._charts(tenant, now), created=ctx.query("created") == "1", **values)

    def overview(self, ctx: Ctx) -> Response:
        return self._overview(ctx)

    def issue_token(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        days_text = ctx.field("expires_in_days")
        description = ctx.field("description")[:200]
        try:
            days = float(days_text) if days_text else None
            if days is not None and not 0 < days <= 3650:
                raise ValueError
        except ValueError:
            return self._overview(ctx, status=400, token_error="Expiry must be a number of days between 1 and 3650.")
        issued = self.pages.tenants.issue_token(ctx.tenant.name, expires_in_days=days, description=description)
        return self._overview(ctx, new_secret=issued.secret, new_token=issued.record)

    def revoke_token(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        try:
            self.pages.tenants.revoke_token(ctx.tenant.name, ctx.request.path_params["token_id"])
        except NotFound:
            return self.pages.error(ctx, 404, "Not found", "There is no such token in this tenant.")
        return RedirectResponse(f"/console/t/{quote(ctx.tenant.name)}#tokens", status_code=303)

    def create_setup_link(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None and ctx.session is not None
        if not ctx.is_operator:
            return self.pages.error(ctx, 403, "Operators only", "Only an operator can create setup links.")
        token, link = self.accounts.create_setup_link(ctx.tenant.id, self.pages.config.setup_link_lifetime,
                                                      ctx.session.account_id)
        return self._overview(ctx, setup_url=f"{self.pages.origin(ctx.request)}/console/setup/{token}",
                              setup_expires=link.expires)

    # -- Test Connection panel ---------------------------------------------------------------------------------
    def _connection(self, tenant: Tenant) -> dict[str, Any] | None:
        entry = self.pages.store.last_connection_test(tenant.id)
        if entry is None:
            return None
        return {"entry": entry, "ok": entry["status"] == 200, "notes": explain(entry)}

    def connection_panel(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        return self.pages.render(ctx, "_connection.html", connection=self._connection(ctx.tenant))

    # -- charts ------------------------------------------------------------------------------------------------
    def _charts(self, tenant: Tenant, now: dt.datetime) -> dict[str, Any]:
        hours = hourly_buckets(now, 24)
        rows = self.pages.store.request_outcomes_since(tenant.id, hours[0])
        step_h = dt.timedelta(hours=1)
        ok = count_into(hours, step_h, (t for t, s in rows if s < 400))
        client = count_into(hours, step_h, (t for t, s in rows if 400 <= s < 500))
        server = count_into(hours, step_h, (t for t, s in rows if s >= 500))
        requests_svg = stacked_bars("SCIM requests per hour by outcome, last 24 hours",
                                    [h.strftime("%H:00") for h in hours],
                                    [Series("success", "bar-success", ok), Series("client error", "bar-warn", client),
                                     Series("server error", "bar-error", server)], label_every=3)
        days = daily_buckets(now, 14)
        evs = self.pages.store.user_event_counts_since(tenant.id, days[0], USER_EVENT_TYPES)
        step_d = dt.timedelta(days=1)
        created = count_into(days, step_d, (t for t, k in evs if k == "user.created"))
        updated = count_into(days, step_d, (t for t, k in evs if k in ("user.updated", "user.enabled")))
        disabled = count_into(days, step_d, (t for t, k in evs if k in ("user.disabled", "user.deleted")))
        users_svg = stacked_bars("Users created, updated and disabled or deleted per day, last 14 days",
                                 [d.strftime("%d %b") for d in days],
                                 [Series("created", "bar-success", created), Series("updated", "bar-info", updated),
                                  Series("disabled/deleted", "bar-error", disabled)], label_every=2)
        return {"requests_svg": requests_svg, "users_svg": users_svg,
                "requests_table": list(zip([h.strftime("%H:00") for h in hours], ok, client, server, strict=True)),
                "users_table": list(zip([d.strftime("%d %b") for d in days], created, updated, disabled,
                                        strict=True)),
                "requests_total": sum(ok) + sum(client) + sum(server),
                "users_total": sum(created) + sum(updated) + sum(disabled)}


