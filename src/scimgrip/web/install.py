"""Mount the browser-facing parts into the SCIM application: ``/console`` (operators and IT admins), ``/sso``
(single sign-on of a tenant's users), ``/app`` (their landing page), and ``/`` redirecting to the console.
Each part is a sub-application with its own HTML error pages (the SCIM app's JSON 404/405 never reach a
browser)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from scimgrip.console.app import Console
from scimgrip.console.pages import Pages
from scimgrip.storage.base import Storage
from scimgrip.storage.sql.engine_store import SqlEngineStore
from scimgrip.storage.sql.web_store import WebStore
from scimgrip.web.config import WebConfig
from scimgrip.web.sessions import SessionManager
from scimgrip.web.sso_views import SsoViews


class HasPublicUrl(Protocol):
    public_url: str | None


def install_web(app: Starlette, storage: Storage, server_config: HasPublicUrl, web: WebConfig | None = None) -> None:
    """Add the console, SSO and landing pages (and the root redirect) to ``app``; ``server_config`` (the SCIM
    app's ``ServerConfig``) gives the public URL."""
    config = web or WebConfig.from_settings(public_url=server_config.public_url)
    store = WebStore(storage)
    sessions = SessionManager(store, config)
    pages = Pages(storage, store, sessions, config)
    console = Console(pages, SqlEngineStore.from_storage(storage))
    sso = SsoViews(pages)

    async def root(request: Request) -> Response:
        return RedirectResponse("/console", status_code=307)

    app.router.routes.extend([
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/console", console.home, methods=["GET", "HEAD"]),
        Mount("/console", app=console.app()),
        Mount("/sso", app=sso.app(sso.routes())),
        Mount("/app", app=sso.app(sso.app_routes())),
    ])
    app.state.web_sessions = sessions
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            try:
                yield state
            finally:
                sso.http.close()           # the IdP client (discovery, JWKS, token requests)

    app.router.lifespan_context = lifespan
