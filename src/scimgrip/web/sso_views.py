"""Single sign-on routes for a tenant's end users, and the page they land on.

``/sso/{tenant}/…`` (protocol code in :mod:`scimgrip.sso`; this module is the HTTP side):

* ``login`` — picks the tenant's configured protocol (a choice page when both are);
* ``oidc/login`` → the provider → ``oidc/callback``: authorization code + PKCE; ``state`` is kept server-side
  (hashed, ten minutes, single use: a replayed or foreign ``state`` is refused) and bound to the browser that
  started the sign-in by a short-lived cookie, so a callback URL planted in another browser (login CSRF,
  RFC 6749 §10.12) is refused;
* ``saml/metadata``; ``saml/login`` (SP-initiated, HTTP-Redirect) → the IdP → ``saml/acs`` (HTTP-POST, also
  IdP-initiated); assertion ids go to the replay cache. The ACS takes a cross-site POST by design (SAML Bindings
  §3.5), so it has no CSRF token: the signed response, its ``InResponseTo`` and the replay cache protect it;
* ``logout`` (POST with the session's CSRF token).

A login is linked to the user provisioned over SCIM (:func:`scimgrip.sso.linking.resolve_user`); a refusal
(not provisioned, disabled, bad or replayed response) is an HTML page with 403 or 400, never a 500. ``/app/
{tenant}`` — where the host application takes over — shows who the user is; **every** request of a user session
re-reads the SCIM user, so a SCIM disable or delete ends the session at once.

Two other purposes ride on the same flows: ``?console=1`` signs a tenant's IT admin into the console (the linked
user's userName or e-mail must be an IT admin account of the tenant) and ``?test=1`` is the console's "test
sign-in": it shows what the IdP sent and which user it links to, without creating a session.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from scimgrip.console.pages import Ctx, Pages
from scimgrip.scim.errors import ScimError
from scimgrip.sso.config import SsoSettings, load_sso_settings
from scimgrip.sso.errors import SsoError
from scimgrip.sso.linking import is_user_active, resolve_user
from scimgrip.storage.base import StoredResource, Tenant
from scimgrip.storage.sql.sso_store import SqlReplayCache
from scimgrip.storage.sql.web_store import TENANT_ADMIN, USER, SessionRecord
from scimgrip.web import csrf

if TYPE_CHECKING:
    from scimgrip.sso.oidc import OidcRelyingParty
    from scimgrip.sso.saml import SamlServiceProvider

log = logging.getLogger("scimgrip.sso.web")

PURPOSES = ("user", "console", "test")
BINDING_COOKIE = "scimgrip_sso"
_REFUSED_403 = frozenset({"not_provisioned", "disabled", "unknown_tenant"})
UNAVAILABLE = "Single sign-on is not available at this address."


class Unavailable(Exception):
    """No such tenant, or no such protocol configured: one answer for both, so a URL reveals no tenant."""


def _key(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _purpose(request: Request) -> str:
    if request.query_params.get("console") == "1":
        return "console"
    if request.query_params.get("test") == "1":
        return "test"
    return "user"


class SsoViews:
    def __init__(self, pages: Pages, http: httpx.Client | None = None) -> None:
        self.pages = pages
        self.http = http or httpx.Client(timeout=10.0)
        self.replay = SqlReplayCache(pages.storage)

    # -- plumbing ----------------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("/{tenant}/login", self._endpoint(self.login), methods=["GET"]),
            Route("/{tenant}/oidc/login", self._endpoint(self.oidc_login), methods=["GET"]),
            Route("/{tenant}/oidc/callback", self._endpoint(self.oidc_callback), methods=["GET"]),
            Route("/{tenant}/saml/metadata", self._endpoint(self.saml_metadata), methods=["GET"]),
            Route("/{tenant}/saml/login", self._endpoint(self.saml_login), methods=["GET"]),
            Route("/{tenant}/saml/acs", self._endpoint(self.saml_acs), methods=["POST"]),
            Route("/{tenant}/logout", self._endpoint(self.logout, any_tenant=True), methods=["GET", "POST"]),
        ]

    def app_routes(self) -> list[Route]:
        return [Route("/{tenant}", self._endpoint(self.landing, any_tenant=True), methods=["GET"])]

    def _endpoint(self, fn: Callable[[Request, Tenant, dict[str, Any]], Response], *,
                  any_tenant: bool = False) -> Callable[..., Any]:
        """Async endpoint: tenant lookup, form reading, the view in a worker thread, refusals as pages.
        ``any_tenant`` views run for an unknown tenant too (with a placeholder), so they answer alike."""

        async def endpoint(request: Request) -> Response:
            form: dict[str, Any] = {}
            if request.method == "POST":
                raw = await request.form(max_part_size=2 * 1024 * 1024)
                form = {k: v for k, v in raw.items() if isinstance(v, str)}
            return await run_in_threadpool(self._run, fn, request, form, any_tenant)

        return endpoint

    def _run(self, fn: Callable[[Request, Tenant, dict[str, Any]], Response], request: Request,
             form: dict[str, Any], any_tenant: bool) -> Response:
        name = request.path_params.get("tenant", "")
        tenant = self.pages.storage.get_tenant(name) if 0 < len(name) <= 63 else None
        if tenant is None and any_tenant:
            tenant = Tenant(id=-1, name=name[:63], created=dt.datetime.now(dt.UTC))   # matches no session
        try:
            if tenant is None:
                raise Unavailable
            return fn(request, tenant, form)
        except Unavailable:
            return self.refused(request, 404, "Not available", UNAVAILABLE)
        except SsoError as exc:
            log.info("sign-in refused for tenant %s: %s", name, exc.reason)
            status = 403 if exc.reason in _REFUSED_403 else (502 if exc.reason == "unreachable" else 400)
            return self.refused(request, status, "Sign-in refused", exc.message, reason=exc.reason, tenant=tenant)
        except Exception:   # a refusal page, never a 500 (the log has the traceback)
            log.exception("sign-in failed for tenant %s", name)
            return self.refused(request, 400, "Sign-in failed", "The sign-in could not be completed; please start "
                                "again.", tenant=tenant)
        except ScimError as exc:
            return self.refused(request, exc.status if 400 <= exc.status < 500 else 400, "Sign-in refused",
                                exc.detail, tenant=tenant)

    def refused(self, request: Request, status: int, title: str, message: str, *, reason: str | None = None,
                tenant: Tenant | None = None) -> HTMLResponse:
        return self.pages.render(Ctx(request, None, None), "sso_refused.html", status=status, title=title,
                                 message=message, reason=reason, sso_tenant=tenant)

    def _origin(self, request: Request) -> str:
        return self.pages.origin(request)

    def _settings(self, tenant: Tenant) -> SsoSettings:
        return load_sso_settings(tenant)

    def _rp(self, tenant: Tenant) -> OidcRelyingParty:
        settings = self._settings(tenant).oidc
        if settings is None:
            raise Unavailable
        from scimgrip.sso.oidc import OidcRelyingParty  # joserfc: 9 MB, paid only by a server with OIDC logins
        return OidcRelyingParty(settings, http=self.http)

    def _sp(self, request: Request, tenant: Tenant) -> SamlServiceProvider:
        settings = self._settings(tenant).saml
        if settings is None:
            raise Unavailable
        # pysaml2 costs 0.7 s and 20 MB to import: only a server that serves a SAML login pays for it
        from scimgrip.sso.saml import SamlServiceProvider
        base = f"{self._origin(request)}/sso/{quote(tenant.name)}/saml"
        return SamlServiceProvider(settings, sp_entity_id=f"{base}/metadata", acs_url=f"{base}/acs",
                                   metadata_url=f"{base}/metadata")

    def _remember(self, tenant: Tenant, key: str, data: dict[str, Any]) -> None:
        expires = dt.datetime.now(dt.UTC) + self.pages.config.pending_login_lifetime
        self.pages.store.put_pending(_key(key), tenant.id, data, expires)

    def _recall(self, tenant: Tenant, key: str) -> dict[str, Any] | None:
        if not key or len(key) > 200:
            return None
        return self.pages.store.take_pending(_key(key), tenant.id, dt.datetime.now(dt.UTC))

    # -- sign-in -----------------------------------------------------------------------------------------------
    def login(self, request: Request, tenant: Tenant, form: dict[str, Any]) -> Response:
        settings = self._settings(tenant)
        query = f"?{request.url.query}" if request.url.query else ""
        base = f"/sso/{quote(tenant.name)}"
        if settings.oidc is not None and settings.saml is None:
            return RedirectResponse(f"{base}/oidc/login{query}", status_code=303)
        if settings.saml is not None and settings.oidc is None:
            return RedirectResponse(f"{base}/saml/login{query}", status_code=303)
        if settings.oidc is None and settings.saml is None:
            raise Unavailable
        return self.pages.render(Ctx(request, None, None), "sso_choose.html", sso_tenant=tenant, query=query)

    def oidc_login(self, request: Request, tenant: Tenant, form: dict[str, Any]) -> Response:
        redirect_uri = f"{self._origin(request)}/sso/{quote(tenant.name)}/oidc/callback"
        url, pending = self._rp(tenant).begin(redirect_uri)
        browser = secrets.token_urlsafe(24)
        self._remember(tenant, pending["state"], {"pending": pending, "purpose": _purpose(request),
                                                  "browser": _key(browser)})
        response = RedirectResponse(url, status_code=303)
        lifetime = int(self.pages.config.pending_login_lifetime.total_seconds())
        response.set_cookie(BINDING_COOKIE, browser, max_age=lifetime, path=f"/sso/{quote(tenant.name)}/oidc",
                            secure=self.pages.config.secure_for(str(request.url)), httponly=True, samesite="lax")
        return response

    def oidc_callback(self, request: Request, tenant: Tenant, form: dict[str, Any]) -> Response:
        params = dict(request.query_params)
        rp = self._rp(tenant)              # not configured: the same answer as an unknown tenant
        kept = self._recall(tenant, params.get("state", ""))
        if kept is None:
            raise SsoError("bad_state", "this sign-in response does not belong to a sign-in started here, or was "
                                        "already used; please start again")
        browser = request.cookies.get(BINDING_COOKIE, "")
        if not browser or not hmac.compare_digest(_key(browser), str(kept.get("browser", ""))):
            raise SsoError("bad_state", "this sign-in was started in another browser; please start again")
        settings = self._settings(tenant).oidc
        claims = rp.complete(params, kept["pending"])
        assert settings is not None
        return self._finish(request, tenant, kept.get("purpose", "user"), "oidc", claims,
                            settings.link_claim, settings.link_attribute, settings.jit)

    def saml_metadata(self, request: Request, tenant: Tenant, form: dict[str, Any]) -> Response:
        return Response(self._sp(request, tenant).metadata_xml(), media_type="application/samlmetadata+xml")

    def saml_login(self, request: Request, tenant: Tenant, form: dict[str, Any]) -> Response:
        relay = secrets.token_urlsafe(24)
        url, request_id = self._sp(request, tenant).begin(relay)
        self._remember(tenant, relay, {"request_id": request_id, "purpose": _purpose(request)})
        return RedirectResponse(url, status_code=303)

    def saml_acs(self, request: Request, tenant: Tenant, form: dict[str, Any]) -> Response:
        response_b64 = str(form.get("SAMLResponse", ""))
        sp = self._sp(request, tenant)
        kept = self._recall(tenant, str(form.get("RelayState", "")))
        # no pending sign-in under this RelayState: an IdP-initiated login (it must not answer a request then)
        expected = kept.get("request_id") if kept else None
        login = sp.complete(response_b64, expected, replay=self.replay)
        settings = self._settings(tenant).saml
        assert settings is not None
        return self._finish(request, tenant, kept.get("purpose", "user") if kept else "user", "saml", login,
                            settings.link_from, settings.link_attribute, settings.jit)

    def _finish(self, request: Request, tenant: Tenant, purpose: str, protocol: str, login: dict[str, Any],
                link_claim: str, link_attribute: str, jit: bool) -> Response:
        if purpose == "test":
            return self._test_result(request, tenant, protocol, login, link_claim, link_attribute)
        user = resolve_user(self.pages.storage, tenant, login, link_claim=link_claim, link_attribute=link_attribute,
                            jit=jit and purpose == "user", protocol=protocol)  # type: ignore[arg-type]
        if purpose == "console":
            return self._console_sign_in(request, tenant, user)
        response = RedirectResponse(f"/app/{quote(tenant.name)}", status_code=303)
        self.pages.sessions.start(request, response, "app", USER, tenant_id=tenant.id, user_id=user.id,
                                  data={"protocol": protocol})
        return response

    def _console_sign_in(self, request: Request, tenant: Tenant, user: StoredResource) -> Response:
        names = [user.doc.get("userName")] + [e.get("value") for e in user.doc.get("emails") or []
                                              if isinstance(e, dict)]
        for name in names:
            if isinstance(name, str) and name:
                account = self.pages.store.find_account(TENANT_ADMIN, tenant.id, name)
                if account is not None:
                    self.pages.store.note_login(account.id)
                    response = RedirectResponse(f"/console/t/{quote(tenant.name)}", status_code=303)
                    self.pages.sessions.start(request, response, "console", TENANT_ADMIN, account_id=account.id,
                                              tenant_id=tenant.id, data={"email": account.email, "sso": True})
                    return response
        raise SsoError("not_provisioned", "you signed in, but you are not an IT admin of this tenant in the "
                                          "scimgrip console")

    def _test_result(self, request: Request, tenant: Tenant, protocol: str, login: dict[str, Any],
                     link_claim: str, link_attribute: str) -> Response:
        shown = {k: v for k, v in login.items() if k not in ("nonce", "at_hash", "c_hash")}
        try:
            user: StoredResource | None = resolve_user(self.pages.storage, tenant, login, link_claim=link_claim,
                                                       link_attribute=link_attribute, jit=False,
                                                       protocol=protocol)  # type: ignore[arg-type]
            outcome = None
        except SsoError as exc:
            user, outcome = None, exc.message
        return self.pages.render(Ctx(request, None, None), "sso_test.html", sso_tenant=tenant, protocol=protocol,
                                 claims=shown, user=user, outcome=outcome, link_claim=link_claim,
                                 link_attribute=link_attribute)

    # -- the signed-in user --------------------------------------------------------------------------------------
    def _user_session(self, request: Request, tenant: Tenant) -> SessionRecord | None:
        """The user's session for this tenant if their SCIM user still exists and is active; else it ends."""
        session = self.pages.sessions.load(request, "app")
        if session is None or session.tenant_id != tenant.id or session.user_id is None:
            return None
        if not is_user_active(self.pages.storage, tenant.id, session.user_id):
            self.pages.store.delete_user_sessions(tenant.id, session.user_id)
            raise SsoError("disabled", "your account was disabled or removed by your organisation; you have been "
                                       "signed out")
        return session

    def landing(self, request: Request, tenant: Tenant, form: dict[str, Any]) -> Response:
        session = self._user_session(request, tenant)
        if session is None:
            return RedirectResponse(f"/sso/{quote(tenant.name)}/login", status_code=303)
        user = self.pages.storage.get(tenant.id, "User", session.user_id or "", include_groups=True)
        return self.pages.render(Ctx(request, None, None, csrf_token=session.csrf), "app.html", sso_tenant=tenant,
                                 user=user, doc=user.doc, groups=user.groups or [], app_session=session)

    def logout(self, request: Request, tenant: Tenant, form: dict[str, Any]) -> Response:
        session = self.pages.sessions.load(request, "app")
        if request.method == "GET" or session is None:
            if session is None:
                response = self.pages.render(Ctx(request, None, None), "sso_signed_out.html", sso_tenant=tenant)
                self.pages.sessions.clear_cookie(request, response, "app")
                return response
            return self.pages.render(Ctx(request, None, None, csrf_token=session.csrf), "sso_logout.html",
                                     sso_tenant=tenant)
        if not csrf.same_origin(request, self.pages.config.public_url) or \
                not csrf.tokens_match(form.get(csrf.FIELD), session.csrf):
            return self.refused(request, 403, "Request refused", "The form was missing its security token.")
        response = self.pages.render(Ctx(request, None, None), "sso_signed_out.html", sso_tenant=tenant)
        self.pages.sessions.end(request, response, "app")
        return response

    def app(self, routes: list[Route]) -> Starlette:
        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            return self.refused(request, exc.status_code, "Not found" if exc.status_code == 404 else "Refused",
                                "There is no such page." if exc.status_code == 404 else str(exc.detail))

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
