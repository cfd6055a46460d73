"""The console as one Starlette sub-application (mounted at ``/console``), with its own HTML error pages: the
SCIM app's JSON 404/405 handlers never answer a browser."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from scimgrip.console.accounts import Accounts
from scimgrip.console.auth_views import AuthViews
from scimgrip.console.debugger_views import DebuggerViews
from scimgrip.console.directory_views import DirectoryViews
from scimgrip.console.jobs_views import JobsViews
from scimgrip.console.pages import Ctx, Endpoint, Pages
from scimgrip.console.sso_views import SsoSettingsViews
from scimgrip.console.tenant_views import TenantViews
from scimgrip.console.webhook_views import WebhookViews
from scimgrip.engine.state import EngineStore
from scimgrip.storage.sql.events_store import EventStore

STATIC = Path(__file__).resolve().parent / "static"


class Console:
    def __init__(self, pages: Pages, engine_store: EngineStore | None) -> None:
        self.pages = pages
        self.accounts = Accounts(pages.store)
        self.auth = AuthViews(pages, self.accounts)
        self.engine_store = engine_store

    @property
    def home(self) -> Endpoint:
        """``/console`` itself (the mount matches only below it): where a visitor belongs."""
        return self.pages.view("public", self.auth.home)

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        routes += self.auth.routes()
        routes += TenantViews(self.pages, self.accounts).routes()
        routes += DirectoryViews(self.pages).routes()
        routes += DebuggerViews(self.pages).routes()
        routes += SsoSettingsViews(self.pages).routes()
        if getattr(self.pages.storage, "engine", None) is not None:   # events live on the SQL backend only
            routes += WebhookViews(self.pages, EventStore(self.pages.storage)).routes()
        if self.engine_store is not None:
            routes += JobsViews(self.pages, self.engine_store).routes()
        routes.append(Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"))
        return routes

    def app(self) -> Starlette:
        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            titles = {404: "Not found", 405: "Method not allowed"}
            return self.pages.error(Ctx(request, None, None), exc.status_code,
                                    titles.get(exc.status_code, "Request refused"),
                                    "There is no such page." if exc.status_code == 404 else str(exc.detail))

        return Starlette(routes=self.routes(), exception_handlers={HTTPException: http_error})
