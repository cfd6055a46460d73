"""Sign-in, sign-out and the one-time setup link.

Password sign-ins are throttled by token buckets in the shared rate-limit table (every worker counts): per
e-mail address (1 attempt per second, bursts of 20) and per client address (2 per second, bursts of 60). An
online guesser gets a few attempts per second at most, and argon2's CPU cost cannot be turned into a flood.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from urllib.parse import quote

from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from scimgrip.console.accounts import Accounts
from scimgrip.console.pages import Ctx, Pages
from scimgrip.scim.errors import InvalidValue
from scimgrip.storage.sql.ratelimit import RateLimitStore
from scimgrip.storage.sql.web_store import OPERATOR, TENANT_ADMIN, fold_email

PER_EMAIL = (1.0, 20.0)      # tokens per second, burst
PER_CLIENT = (2.0, 60.0)


def safe_next(target: str, default: str) -> str:
    """Only our own console paths: never an open redirect (``//evil``, ``/\\evil``, absolute URLs)."""
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target \
            and not any(ord(c) < 32 for c in target):
        return target
    return default


class AuthViews:
    def __init__(self, pages: Pages, accounts: Accounts) -> None:
        self.pages = pages
        self.accounts = accounts
        self.limits = RateLimitStore(pages.storage)

    def routes(self) -> list[Route]:
        v = self.pages.view
        return [
            Route("/", v("public", self.home), methods=["GET"]),
            Route("/login", v("public", self.operator_login), methods=["GET", "POST"]),
            Route("/t/{tenant}/login", v("public", self.tenant_login), methods=["GET", "POST"]),
            Route("/logout", v("signed_in", self.logout), methods=["POST"]),
            Route("/setup/{token}", v("public", self.setup), methods=["GET", "POST"]),
        ]

    def home(self, ctx: Ctx) -> Response:
        if ctx.session is None:
            return RedirectResponse("/console/login", status_code=303)
        if ctx.is_operator:
            return RedirectResponse("/console/tenants", status_code=303)
        tenant = self.pages.storage.get_tenant_by_id(ctx.session.tenant_id or 0)
        if tenant is None:
            return RedirectResponse("/console/login", status_code=303)
        return RedirectResponse(f"/console/t/{quote(tenant.name)}", status_code=303)

    def _wait(self, ctx: Ctx, email: str) -> float:
        """Seconds to wait before another sign-in attempt for this address or from this client (0: go on)."""
        now = time.time()
        client = ctx.request.client.host if ctx.request.client else "unknown"
        by_email = hashlib.sha256(fold_email(email).encode()).hexdigest()[:40]
        return max(self.limits.take(f"console-login:{by_email}", *PER_EMAIL, now),
                   self.limits.take(f"console-login-ip:{client}", *PER_CLIENT, now))

    def _sign_in(self, ctx: Ctx, kind: str, tenant_id: int | None, default_next: str) -> Response:
        email, password = ctx.field("email"), ctx.field("password")
        wait = self._wait(ctx, email)
        if wait > 0:
            refused = self.pages.render(ctx, "login.html", status=429, email=email, login_tenant=ctx.extra.get("t"),
                                        error="Too many sign-in attempts. Wait a moment and try again.")
            refused.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return refused
        account = self.accounts.authenticate(kind, tenant_id, email, password)
        if account is None:
            return self.pages.render(ctx, "login.html", status=400, email=email,
                                     error="Wrong e-mail address or password.", login_tenant=ctx.extra.get("t"))
        response = RedirectResponse(safe_next(ctx.query("next"), default_next), status_code=303)
        self.pages.sessions.start(ctx.request, response, "console", kind, account_id=account.id, tenant_id=tenant_id,
                                  data={"email": account.email})
        return response

    def operator_login(self, ctx: Ctx) -> Response:
        if ctx.form is None:
            return self.pages.render(ctx, "login.html", email="", error=None, login_tenant=None)
        return self._sign_in(ctx, OPERATOR, None, "/console/tenants")

    def tenant_login(self, ctx: Ctx) -> Response:
        name = ctx.request.path_params["tenant"]
        tenant = self.pages.storage.get_tenant(name) if len(name) <= 63 else None
        ctx.extra["t"] = name
        sso = tenant.settings.get("sso", {}) if tenant is not None else {}
        if ctx.form is None:
            return self.pages.render(ctx, "login.html", email="", error=None, login_tenant=name,
                                     tenant_sso=bool(sso))
        if tenant is None:   # same answer as a wrong password; the argon2 cost is spent all the same
            self.accounts.authenticate(TENANT_ADMIN, -1, ctx.field("email"), ctx.field("password"))
            return self.pages.render(ctx, "login.html", status=400, email=ctx.field("email"),
                                     error="Wrong e-mail address or password.", login_tenant=name)
        return self._sign_in(ctx, TENANT_ADMIN, tenant.id, f"/console/t/{quote(tenant.name)}")

    def logout(self, ctx: Ctx) -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        self.pages.sessions.end(ctx.request, response, "console")
        return response

    def setup(self, ctx: Ctx) -> Response:
        token = ctx.request.path_params["token"]
        link = self.accounts.peek_setup_link(token, dt.datetime.now(dt.UTC))
        if link is None:
            return self.pages.error(ctx, 404, "Setup link not valid",
                                    "This setup link is invalid, has expired or was already used. "
                                    "Ask your scimgrip operator for a new one.")
        tenant = self.pages.storage.get_tenant_by_id(link.tenant_id)
        if tenant is None:
            return self.pages.error(ctx, 404, "Setup link not valid", "The tenant of this link no longer exists.")
        if ctx.form is None:
            return self.pages.render(ctx, "setup.html", setup_tenant=tenant, email="", error=None)
        email = ctx.field("email")
        try:
            account = self.accounts.redeem_setup_link(token, email, ctx.field("password"), ctx.field("confirm"))
        except InvalidValue as exc:
            return self.pages.render(ctx, "setup.html", status=400, setup_tenant=tenant, email=email,
                                     error=exc.detail)
        self.pages.store.note_login(account.id)
        response = RedirectResponse(f"/console/t/{quote(tenant.name)}", status_code=303)
        self.pages.sessions.start(ctx.request, response, "console", TENANT_ADMIN, account_id=account.id,
                                  tenant_id=tenant.id, data={"email": account.email})
        return response
