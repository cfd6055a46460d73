"""Directory views: users (search, active/disabled filter, pages), a user with its raw SCIM resource and change
history (the events outbox), groups with paged members.

Reads go through :class:`~scimgrip.service.scim.ScimService`, so the console shows exactly what a SCIM client
would read (same filter semantics, same rendering); the search box becomes a SCIM filter.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response
from starlette.routing import Route

from scimgrip.console.pages import Ctx, Pages
from scimgrip.scim.errors import NotFound, ScimError
from scimgrip.scim.messages import parse_list_params
from scimgrip.service.scim import ScimService
from scimgrip.tenancy.service import tenant_url

PAGE = 25
MEMBERS_PAGE = 50


def _literal(text: str) -> str:
    """A SCIM filter string literal (JSON string syntax, RFC 7644 §3.4.2.2)."""
    return orjson.dumps(text).decode()


def user_filter(q: str, status: str) -> str | None:
    """The SCIM filter for the console's user search: name, userName, e-mail, externalId; active or not."""
    parts: list[str] = []
    if q:
        lit = _literal(q)
        parts.append(f"(userName co {lit} or displayName co {lit} or name.formatted co {lit} or "
                     f"name.givenName co {lit} or name.familyName co {lit} or emails.value co {lit} or "
                     f"externalId eq {lit})")
    # a user without "active" counts as active (RFC 7643 §4.1.1 leaves the default to the provider)
    if status == "active":
        parts.append("not (active eq false)")
    elif status == "disabled":
        parts.append("active eq false")
    return " and ".join(parts) or None


def group_filter(q: str) -> str | None:
    if not q:
        return None
    lit = _literal(q)
    return f"(displayName co {lit} or externalId eq {lit})"


def _int(text: str, default: int) -> int:
    try:
        return max(1, int(text))
    except ValueError:
        return default


class DirectoryViews:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.service = ScimService(pages.storage)

    def routes(self) -> list[Route]:
        v = self.pages.view
        return [
            Route("/t/{tenant}/users", v("tenant", self.users), methods=["GET"]),
            Route("/t/{tenant}/users/{id}", v("tenant", self.user), methods=["GET"]),
            Route("/t/{tenant}/groups", v("tenant", self.groups), methods=["GET"]),
            Route("/t/{tenant}/groups/{id}", v("tenant", self.group), methods=["GET"]),
        ]

    def _base(self, ctx: Ctx) -> str:
        assert ctx.tenant is not None
        return tenant_url(self.pages.origin(ctx.request), ctx.tenant.name)

    def _list(self, ctx: Ctx, rt: str, flt: str | None, sort_by: str) -> dict[str, Any]:
        assert ctx.tenant is not None
        start = _int(ctx.query("start"), 1)
        params = parse_list_params({"filter": flt, "startIndex": start, "count": PAGE, "sortBy": sort_by},
                                   self.service.limits)
        body = self.service.query(ctx.tenant, rt, params, self._base(ctx)).body or {}
        total = int(body["totalResults"])
        return {"items": body.get("Resources", []), "total": total, "start": start,
                "prev": max(1, start - PAGE) if start > 1 else None,
                "next": start + PAGE if start + PAGE <= total else None}

    def users(self, ctx: Ctx) -> Response:
        q, status = ctx.query("q")[:200], ctx.query("status", "all")
        try:
            page = self._list(ctx, "User", user_filter(q, status), "userName")
        except ScimError as exc:
            return self.pages.render(ctx, "users.html", status=400, q=q, status_filter=status, error=exc.detail,
                                     page={"items": [], "total": 0, "start": 1, "prev": None, "next": None})
        return self.pages.render(ctx, "users.html", q=q, status_filter=status, page=page, error=None)

    def groups(self, ctx: Ctx) -> Response:
        q = ctx.query("q")[:200]
        page = self._list(ctx, "Group", group_filter(q), "displayName")
        for g in page["items"]:
            g["_member_count"] = len(g.get("members") or [])
        return self.pages.render(ctx, "groups.html", q=q, page=page)

    def user(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        rid = ctx.request.path_params["id"]
        try:
            body = self.service.get(ctx.tenant, "User", rid, self._base(ctx)).body or {}
        except (NotFound, ScimError):
            return self.pages.error(ctx, 404, "Not found", "There is no such user in this tenant.")
        history = self.pages.store.resource_history(ctx.tenant.id, rid)
        return self.pages.render(ctx, "user.html", user=body, raw=orjson.dumps(body, option=orjson.OPT_INDENT_2)
                                 .decode(), history=history)

    def _with_names(self, ctx: Ctx, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The page's members with userName / displayName, read in one search per resource type."""
        assert ctx.tenant is not None
        names: dict[str, str] = {}
        for rt, attr in (("User", "userName"), ("Group", "displayName")):
            ids = [m["value"] for m in members if (m.get("type") or "User") == rt]
            if not ids:
                continue
            flt = " or ".join(f"id eq {_literal(i)}" for i in ids)
            params = parse_list_params({"filter": flt, "count": len(ids), "attributes": attr}, self.service.limits)
            body = self.service.query(ctx.tenant, rt, params, self._base(ctx)).body or {}
            names.update({r["id"]: r.get(attr, "") for r in body.get("Resources", [])})
        return [{**m, "name": names.get(m["value"], m.get("display") or m["value"])} for m in members]

    def group(self, ctx: Ctx) -> Response:
        assert ctx.tenant is not None
        rid = ctx.request.path_params["id"]
        try:
            body = self.service.get(ctx.tenant, "Group", rid, self._base(ctx)).body or {}
        except (NotFound, ScimError):
            return self.pages.error(ctx, 404, "Not found", "There is no such group in this tenant.")
        members = body.get("members") or []
        start = _int(ctx.query("start"), 1)
        shown = self._with_names(ctx, members[start - 1:start - 1 + MEMBERS_PAGE])
        page = {"items": shown, "total": len(members), "start": start,
                "prev": max(1, start - MEMBERS_PAGE) if start > 1 else None,
                "next": start + MEMBERS_PAGE if start + MEMBERS_PAGE <= len(members) else None}
        history = self.pages.store.resource_history(ctx.tenant.id, rid, limit=50)
        raw = dict(body)
        raw["members"] = f"({len(members)} members, listed below)" if len(members) > 20 else members
        return self.pages.render(ctx, "group.html", group=body, page=page, history=history,
                                 raw=orjson.dumps(raw, option=orjson.OPT_INDENT_2).decode())
