"""The SCIM request debugger: every logged SCIM request of a tenant (newest first, filterable, paged by id),
one request in full (masked bodies), with explanations of failures and of accepted IdP quirks."""

from __future__ import annotations

import datetime as dt

import orjson
from starlette.responses import Response
from starlette.routing import Route

from scimgrip.console.explain import explain
from scimgrip.console.pages import Ctx, Pages
from scimgrip.storage.sql.web_store import RequestLogFilter

PAGE = 50
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
WINDOWS = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7)}


def pretty(text: str | None) -> str | None:
    """Indented JSON if the (masked, maybe truncated) body parses, else the text as logged."""
    if not text:
        return text
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text


class DebuggerViews:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    def routes(self) -> list[Route]:
        v = self.pages.view
        return [
            Route("/t/{tenant}/requests", v("tenant", self.requests), methods=["GET"]),
            Route("/t/{tenant}/requests/{entry_id:int}", v("tenant", self.request), methods=["GET"]),
        ]

    def requests(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        outcome = ctx.query("outcome")
        method = ctx.query("method").upper()
        window = ctx.query("window")
        status_text = ctx.query("status")
        before = ctx.query("before")
        flt = RequestLogFilter(
            outcome=outcome if outcome in ("success", "failure") else None,
            status=int(status_text) if status_text.isdigit() and len(status_text) == 3 else None,
            method=method if method in METHODS else None,
            path_contains=ctx.query("path")[:200] or None,
            since=dt.datetime.now(dt.UTC) - WINDOWS[window] if window in WINDOWS else None,
            before_id=int(before) if before.isdigit() and len(before) < 19 else None)
        rows = self.pages.store.search_request_log(ctx.tenant.id, flt, limit=PAGE + 1)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        entries = [(r, explain(r)) for r in rows]
        params = {k: v for k, v in (("outcome", flt.outcome or ""), ("method", flt.method or ""),
                                    ("path", flt.path_contains or ""), ("window", window if window in WINDOWS
                                                                        else ""),
                                    ("status", str(flt.status) if flt.status else "")) if v}
        return self.pages.render(ctx, "requests.html", entries=entries, flt=flt, window=window, params=params,
                                 next_before=rows[-1]["id"] if more and rows else None, methods=METHODS)

    def request(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        entry_id = ctx.request.path_params["entry_id"]
        entry = self.pages.store.request_log_entry(ctx.tenant.id, entry_id) if entry_id < 2**62 else None
        if entry is None:
            return self.pages.error(ctx, 404, "Not found", "There is no such request in this tenant's log.")
        return self.pages.render(ctx, "request.html", entry=entry, notes=explain(entry),
                                 request_body=pretty(entry.get("request_body")),
                                 response_body=pretty(entry.get("response_body")))
