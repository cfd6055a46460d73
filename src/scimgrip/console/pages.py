"""Page plumbing shared by every console view: who may see a page, CSRF on every POST, rendering, error pages.

A view is a plain synchronous function ``fn(ctx) -> Response`` (storage is synchronous); :meth:`Pages.view`
wraps it in an async endpoint that loads the session, checks access and the CSRF token, and runs it in a worker
thread. Access rules:

* ``public``: anyone (sign-in and setup pages; POSTs need the pre-session double-submit token);
* ``operator``: an operator session;
* ``tenant``: the ``{tenant}`` of the path must exist and be the admin's own tenant (operators see all). Any
  other tenant answers **404**, the same as a tenant that does not exist, so an admin learns nothing about
  other tenants.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from scimgrip.scim.errors import ScimError
from scimgrip.storage.base import Storage, Tenant
from scimgrip.storage.sql.web_store import OPERATOR, Account, SessionRecord, WebStore
from scimgrip.tenancy.service import TenantService
from scimgrip.web import csrf
from scimgrip.web.config import WebConfig
from scimgrip.web.sessions import SessionManager

log = logging.getLogger("scimgrip.console")

TEMPLATES = Path(__file__).resolve().parent / "templates"
Endpoint = Callable[[Request], Any]


def _fmt_time(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    seconds = int((dt.datetime.now(dt.UTC) - value).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def make_environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["time"] = _fmt_time
    env.filters["ago"] = _ago
    env.filters["urlq"] = lambda v: quote(str(v), safe="")
    return env


@dataclass
class Ctx:
    """What a view gets: the request, the session and its account, the tenant of the path, the checked form."""

    request: Request
    session: SessionRecord | None
    account: Account | None
    tenant: Tenant | None = None
    form: FormData | None = None
    csrf_token: str = ""
    set_pre_session: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_operator(self) -> bool:
        return self.session is not None and self.session.kind == OPERATOR

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else default

    def query(self, name: str, default: str = "") -> str:
        return self.request.query_params.get(name, default).strip()


class Pages:
    """The console's shared dependencies and the :meth:`view` wrapper."""

    def __init__(self, storage: Storage, store: WebStore, sessions: SessionManager, config: WebConfig) -> None:
        self.storage = storage
        self.store = store
        self.sessions = sessions
        self.config = config
        self.tenants = TenantService(storage, tenant_cache_ttl=0)
        self.env = make_environment()

    # -- rendering ---------------------------------------------------------------------------------------------
    def origin(self, request: Request) -> str:
        """``scheme://host`` of the public URL, or of the request."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"

    def render(self, ctx: Ctx, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        values.setdefault("tenant", ctx.tenant)
        html = self.env.get_template(template).render(
            ctx=ctx, session=ctx.session, account=ctx.account, csrf_token=ctx.csrf_token,
            is_operator=ctx.is_operator, path=ctx.request.url.path, **values)
        response = HTMLResponse(html, status_code=status, headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                       "script-src 'self'; frame-ancestors 'none'; form-action 'self' https:",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})
        if ctx.set_pre_session:
            csrf.set_pre_session(response, ctx.csrf_token, secure=self.config.secure_for(str(ctx.request.url)),
                                 path="/console")
        return response

    def error(self, ctx: Ctx, status: int, title: str, message: str) -> HTMLResponse:
        return self.render(ctx, "error.html", status=status, title=title, message=message)

    # -- the view wrapper --------------------------------------------------------------------------------------
    def view(self, access: str, fn: Callable[[Ctx], Response]) -> Endpoint:
        assert access in ("public", "operator", "tenant", "signed_in")

        async def endpoint(request: Request) -> Response:
            session, account = await run_in_threadpool(self._session, request)
            ctx = Ctx(request, session, account)
            if session is not None:
                ctx.csrf_token = session.csrf
            else:
                ctx.csrf_token = csrf.pre_session_token(request)
                ctx.set_pre_session = request.cookies.get(csrf.PRE_SESSION_COOKIE) != ctx.csrf_token
            if access != "public" and session is None:
                if request.headers.get("hx-request") == "true":
                    # an htmx poll after the session ended: send the whole page to sign-in, not into the panel
                    return Response(status_code=200, headers={"HX-Redirect": "/console/login"})
                if request.method == "GET":
                    tenant_name = request.path_params.get("tenant")
                    login = f"/console/t/{quote(tenant_name)}/login" if tenant_name else "/console/login"
                    return RedirectResponse(f"{login}?next={quote(request.url.path)}", status_code=303)
                return self.error(ctx, 403, "Signed out", "Your session has ended. Sign in again.")
            if access == "operator" and not ctx.is_operator:
                return self.error(ctx, 403, "Operators only", "This page is for the operators of this "
                                  "scimgrip installation.")
            if "tenant" in request.path_params and access != "public":
                tenant = await run_in_threadpool(self._tenant_for, session, request.path_params["tenant"])
                if tenant is None:
                    return self.error(ctx, 404, "Not found", "There is no such tenant.")
                ctx.tenant = tenant
            if request.method == "POST":
                try:
                    ctx.form = await csrf.checked_form(request, ctx.csrf_token if session is not None else
                                                       request.cookies.get(csrf.PRE_SESSION_COOKIE),
                                                       self.config.public_url)
                except csrf.CsrfError as exc:
                    log.info("refused POST %s: %s", request.url.path, exc)
                    return self.error(ctx, 403, "Request refused",
                                      "The form was missing its security token or came from another site. "
                                      "Reload the page and try again.")
            try:
                response: Response = await run_in_threadpool(fn, ctx)
            except ScimError as exc:
                return self.error(ctx, exc.status if 400 <= exc.status < 500 else 500, "Request refused",
                                  exc.detail)
            return response

        return endpoint

    def _session(self, request: Request) -> tuple[SessionRecord | None, Account | None]:
        session = self.sessions.load(request, "console")
        if session is None or session.account_id is None:
            return None, None
        account = self.store.get_account(session.account_id)
        if account is None:
            return None, None
        return session, account

    def _tenant_for(self, session: SessionRecord | None, name: str) -> Tenant | None:
        if len(name) > 63:
            return None
        tenant = self.storage.get_tenant(name)
        if tenant is None or session is None:
            return None
        if session.kind == OPERATOR or session.tenant_id == tenant.id:
            return tenant
        return None
