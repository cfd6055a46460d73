"""A local Microsoft Graph look-alike serving a directory file, so ``GraphSource`` is tested over real HTTP.

Only what the Graph source uses: the client-credentials token endpoint, ``/users`` and ``/groups`` with
``$select``/``$expand=manager``/``$top`` and ``@odata.nextLink`` paging (pages are capped at
``max_page_size`` like Graph's 999), group members, ``/directory/deletedItems``, ``/applications``,
``/servicePrincipals(appId=…)`` and ``appRoleAssignedTo``, and ``/users/delta`` + ``/groups/delta``. Delta
follows Graph: the initial round returns everything (a group's ``members@delta`` split over several items, as
Graph does for large groups), ``$deltatoken=latest`` returns only a delta link, and a later round returns only
what the test hooks (``update_user``, ``soft_delete_user``, ``add_member``, …) changed since its token.
``throttle()`` makes the next calls answer 429 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TENANT = "contoso-tenant"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "s3cr3t~value"
APP_OBJECT_ID = "aaaaaaaa-0000-0000-0000-000000000001"
SERVICE_PRINCIPAL_ID = "bbbbbbbb-0000-0000-0000-000000000002"
GROUP_FIELDS = ("id", "displayName", "mailNickname", "description")


def graph_user(entra: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A directory-file user (Entra vocabulary) → (Graph user resource, manager id)."""
    user = {
        "id": entra["objectId"],
        "businessPhones": [entra["telephoneNumber"]] if entra.get("telephoneNumber") else [],
        "mobilePhone": entra.get("mobile"),
        "otherMails": list(entra.get("otherMails", [])),
    }
    for key in ("userPrincipalName", "displayName", "givenName", "surname", "mail", "mailNickname",
                "streetAddress", "city", "state", "postalCode", "country", "employeeId", "jobTitle", "department",
                "accountEnabled"):
        user[key] = entra.get(key)
    if entra.get("softDeleted"):
        user["deletedDateTime"] = entra.get("deletedDateTime") or "2024-01-01T00:00:00Z"
    return user, entra.get("manager")


@dataclass
class Directory:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_users: dict[str, dict[str, Any]] = field(default_factory=dict)
    managers: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    assignments: list[dict[str, Any]] = field(default_factory=list)


class FakeGraph:
    """The fake tenant: state, test hooks, and the Starlette app serving it."""

    def __init__(self, directory_file: str | Path, *, max_page_size: int = 100, member_chunk: int = 20,
                 partial_updates: bool = False) -> None:
        self.max_page_size = max_page_size
        self.partial_updates = partial_updates   # delta returns only the changed properties of updated users
        self.member_chunk = member_chunk
        self.lock = threading.RLock()
        self.dir = Directory()
        self.seq = 0
        # (seq, user id, changed Graph fields; None = created/deleted/restored: the whole object)
        self.user_log: list[tuple[int, str, frozenset[str] | None]] = []
        self.group_log: list[tuple[int, str]] = []     # (seq, group id): attributes changed / created / deleted
        self.member_log: list[tuple[int, str, str, bool]] = []   # (seq, group, member, added)
        self.requests: list[tuple[str, str]] = []      # (method, path?query)
        self.token_requests = 0
        self.tokens: set[str] = set()
        self.app_id = CLIENT_ID
        self._throttle: list[tuple[int, str]] = []
        self._rounds: dict[str, tuple[list[dict[str, Any]], int, dict[str, str]]] = {}
        self._load(json.loads(Path(directory_file).read_text(encoding="utf-8")))
        self.app = Starlette(routes=self._routes())

    def _load(self, doc: dict[str, Any]) -> None:
        for entra in doc.get("users", []):
            user, manager = graph_user(entra)
            (self.dir.deleted_users if "deletedDateTime" in user else self.dir.users)[user["id"]] = user
            if manager:
                self.dir.managers[user["id"]] = manager
        for g in doc.get("groups", []):
            self.dir.groups[g["objectId"]] = {"id": g["objectId"], "displayName": g.get("displayName"),
                                              "mailNickname": g.get("mailNickname"),
                                              "description": g.get("description")}
            self.dir.members[g["objectId"]] = list(g.get("members", []))
        assigned = doc.get("assignments", {})
        for kind, key in (("User", "users"), ("Group", "groups")):
            for pid in assigned.get(key, []):
                self.dir.assignments.append({"id": secrets.token_hex(8), "principalId": pid, "principalType": kind,
                                             "resourceId": SERVICE_PRINCIPAL_ID})

    # -- test hooks (each records a change for delta) -------------------------------------------------------

    def _tick(self) -> int:
        self.seq += 1
        return self.seq

    def update_user(self, user_id: str, **fields: Any) -> None:
        """Change Graph fields of a live user (``manager=<id>`` or ``manager=None`` sets the manager)."""
        with self.lock:
            names = frozenset(fields)
            if "manager" in fields:
                manager = fields.pop("manager")
                if manager:
                    self.dir.managers[user_id] = manager
                else:
                    self.dir.managers.pop(user_id, None)
            self.dir.users[user_id].update(fields)
            self.user_log.append((self._tick(), user_id, names))

    def add_user(self, user: dict[str, Any], manager: str | None = None) -> None:
        with self.lock:
            self.dir.users[user["id"]] = {"businessPhones": [], "otherMails": [], **user}
            if manager:
                self.dir.managers[user["id"]] = manager
            self.user_log.append((self._tick(), user["id"], None))

    def soft_delete_user(self, user_id: str) -> None:
        with self.lock:
            user = self.dir.users.pop(user_id)
            user["deletedDateTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.dir.deleted_users[user_id] = user
            self.user_log.append((self._tick(), user_id, None))

    def restore_user(self, user_id: str) -> None:
        with self.lock:
            user = self.dir.deleted_users.pop(user_id)
            user.pop("deletedDateTime", None)
            self.dir.users[user_id] = user
            self.user_log.append((self._tick(), user_id, None))

    def hard_delete_user(self, user_id: str) -> None:
        """Delete for good (from the live users or the recycle bin); memberships go too."""
        with self.lock:
            self.dir.users.pop(user_id, None)
            self.dir.deleted_users.pop(user_id, None)
            self.dir.managers.pop(user_id, None)
            self.user_log.append((self._tick(), user_id, None))
            for gid, members in self.dir.members.items():
                if user_id in members:
                    members.remove(user_id)
                    self.member_log.append((self._tick(), gid, user_id, False))

    def update_group(self, group_id: str, **fields: Any) -> None:
        with self.lock:
            self.dir.groups[group_id].update(fields)
            self.group_log.append((self._tick(), group_id))

    def delete_group(self, group_id: str) -> None:
        with self.lock:
            self.dir.groups.pop(group_id)
            self.dir.members.pop(group_id, None)
            self.group_log.append((self._tick(), group_id))

    def add_member(self, group_id: str, member_id: str) -> None:
        with self.lock:
            self.dir.members[group_id].append(member_id)
            self.member_log.append((self._tick(), group_id, member_id, True))

    def remove_member(self, group_id: str, member_id: str) -> None:
        with self.lock:
            self.dir.members[group_id].remove(member_id)
            self.member_log.append((self._tick(), group_id, member_id, False))

    def assign(self, principal_id: str, principal_type: str) -> None:
        with self.lock:
            self.dir.assignments.append({"id": secrets.token_hex(8), "principalId": principal_id,
                                         "principalType": principal_type, "resourceId": SERVICE_PRINCIPAL_ID})

    def throttle(self, times: int = 1, *, retry_after: str = "1", status: int = 429) -> None:
        """The next ``times`` Graph calls answer ``status`` with ``Retry-After: retry_after``."""
        with self.lock:
            self._throttle.extend([(status, retry_after)] * times)

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    # -- rendering ------------------------------------------------------------------------------------------

    def _render_user(self, user: dict[str, Any], query: Any) -> dict[str, Any]:
        select = query.get("$select")
        if select:   # like Graph: every selected property, null when unset
            out = {k: user.get(k) for k in select.split(",") if k != "manager"}
            out["id"] = user["id"]
        else:
            out = dict(user)
        if "manager" in query.get("$expand", ""):
            manager = self.dir.managers.get(user["id"])
            if manager and manager in self.dir.users:
                out["manager"] = {"@odata.type": "#microsoft.graph.user", "id": manager}
        return out

    def _render_group(self, group: dict[str, Any], query: Any) -> dict[str, Any]:
        select = query.get("$select")
        return {k: v for k, v in group.items() if not select or k == "id" or k in select.split(",")}

    def _member_ref(self, member_id: str) -> dict[str, Any]:
        kind = "group" if member_id in self.dir.groups else "user"
        return {"@odata.type": f"#microsoft.graph.{kind}", "id": member_id}

    def _live_members(self, group_id: str) -> list[str]:
        """Members as Graph lists them: soft-deleted users drop out until restored."""
        return [m for m in self.dir.members.get(group_id, []) if m in self.dir.users or m in self.dir.groups]

    def _page(self, request: Request, items: list[dict[str, Any]]) -> JSONResponse:
        """One page of a collection; ``$skiptoken`` is the offset, the nextLink repeats the query."""
        top = min(int(request.query_params.get("$top", self.max_page_size)), self.max_page_size)
        offset = int(request.query_params.get("$skiptoken", "0"))
        body: dict[str, Any] = {"value": items[offset:offset + top]}
        if offset + top < len(items):
            query = {k: v for k, v in request.query_params.items() if k != "$skiptoken"}
            query["$skiptoken"] = str(offset + top)
            body["@odata.nextLink"] = str(request.url.replace_query_params(**query))
        return JSONResponse(body)

    # -- delta ----------------------------------------------------------------------------------------------

    def _delta_items(self, kind: str, since: int | None, query: dict[str, str]) -> list[dict[str, Any]]:
        if kind == "users":
            if since is None:
                return [self._render_user(u, query) for u in self.dir.users.values()]
            changed: dict[str, frozenset[str] | None] = {}
            for seq, uid, names in self.user_log:
                if seq > since:
                    before = changed.get(uid, frozenset())
                    changed[uid] = None if before is None or names is None else before | names
            out: list[dict[str, Any]] = []
            for uid, names in changed.items():
                if uid in self.dir.users:
                    item = self._render_user(self.dir.users[uid], query)
                    if self.partial_updates and names is not None:
                        item = {k: v for k, v in item.items() if k == "id" or k in names}
                    out.append(item)
                elif uid in self.dir.deleted_users:
                    out.append({"id": uid, "@removed": {"reason": "changed"}})
                else:
                    out.append({"id": uid, "@removed": {"reason": "deleted"}})
            return out
        out = []
        if since is None:
            for gid, group in self.dir.groups.items():
                refs = [self._member_ref(m) for m in self._live_members(gid)]
                chunks = [refs[i:i + self.member_chunk] for i in range(0, len(refs), self.member_chunk)] or [[]]
                out.append({**self._render_group(group, query), "members@delta": chunks[0]})
                out.extend({"id": gid, "members@delta": chunk} for chunk in chunks[1:])
            return out
        changed = dict.fromkeys(gid for seq, gid in self.group_log if seq > since)
        membership: dict[str, dict[str, bool]] = {}
        for seq, gid, mid, added in self.member_log:
            if seq > since:
                membership.setdefault(gid, {})[mid] = added
        for gid in dict.fromkeys([*changed, *membership]):
            if gid not in self.dir.groups:
                out.append({"id": gid, "@removed": {"reason": "deleted"}})
                continue
            entry: dict[str, Any] = {"id": gid}
            if gid in changed:
                entry.update(self._render_group(self.dir.groups[gid], query))
            if gid in membership:
                entry["members@delta"] = [self._member_ref(m) if added else {"id": m, "@removed": {"reason": "deleted"}}
                                         for m, added in membership[gid].items()]
            out.append(entry)
        return out

    async def delta(self, request: Request) -> Response:
        kind = request.url.path.split("/")[-2]   # /v1.0/users/delta → users
        params = request.query_params
        base = str(request.url.replace_query_params())
        with self.lock:
            # like Graph, the links carry the round's $select/$expand (and the position in the change log)
            if "$skiptoken" in params:
                round_id, _, offset_text = params["$skiptoken"].partition(":")
                items, upto, query = self._rounds[round_id]
                offset = int(offset_text)
            else:
                token = params.get("$deltatoken")
                upto = self.seq
                query = {k: v for k, v in params.items() if k in ("$select", "$expand")}
                if token == "latest":
                    items = []
                else:
                    since = None
                    if token:
                        state = json.loads(base64.urlsafe_b64decode(token))
                        since, query = state["seq"], state["query"]
                    items = self._delta_items(kind, since, query)
                round_id = secrets.token_hex(6)
                self._rounds[round_id] = (items, upto, query)
                offset = 0
            page = items[offset:offset + self.max_page_size]
            body: dict[str, Any] = {"value": page}
            if offset + self.max_page_size < len(items):
                body["@odata.nextLink"] = f"{base}?$skiptoken={round_id}:{offset + self.max_page_size}"
            else:
                token = base64.urlsafe_b64encode(json.dumps({"seq": upto, "query": query}).encode()).decode()
                body["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
                self._rounds.pop(round_id, None)
            return JSONResponse(body)

    # -- endpoints ------------------------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}   # no python-multipart
        self.token_requests += 1
        if request.path_params["tenant"] != TENANT:
            return JSONResponse({"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."},
                                status_code=400)
        if (form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET
                or form.get("grant_type") != "client_credentials"):
            return JSONResponse({"error": "invalid_client",
                                 "error_description": "AADSTS7000215: Invalid client secret provided."},
                                status_code=401)
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens.add(token)
        return JSONResponse({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                             "access_token": token})

    def _guard(self, request: Request) -> Response | None:
        with self.lock:
            self.requests.append((request.method, request.url.path + ("?" + request.url.query
                                                                       if request.url.query else "")))
            if self._throttle:
                status, retry_after = self._throttle.pop(0)
                return JSONResponse({"error": {"code": "TooManyRequests", "message": "Throttled"}},
                                    status_code=status, headers={"Retry-After": retry_after})
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return JSONResponse({"error": {"code": "InvalidAuthenticationToken",
                                               "message": "Access token is empty or invalid."}}, status_code=401)
        return None

    def _not_found(self, what: str) -> JSONResponse:
        return JSONResponse({"error": {"code": "Request_ResourceNotFound",
                                       "message": f"Resource '{what}' does not exist."}}, status_code=404)

    def _routes(self) -> list[Route]:
        def graph(handler: Any) -> Any:
            async def endpoint(request: Request) -> Response:
                denied = self._guard(request)
                if denied is not None:
                    return denied
                with self.lock:
                    result: Response = await handler(request)
                    return result
            return endpoint

        async def users(request: Request) -> Response:
            return self._page(request, [self._render_user(u, request.query_params) for u in self.dir.users.values()])

        async def user(request: Request) -> Response:
            uid = request.path_params["id"]
            if uid not in self.dir.users:
                return self._not_found(uid)
            return JSONResponse(self._render_user(self.dir.users[uid], request.query_params))

        async def groups(request: Request) -> Response:
            return self._page(request, [self._render_group(g, request.query_params) for g in self.dir.groups.values()])

        async def group(request: Request) -> Response:
            gid = request.path_params["id"]
            if gid not in self.dir.groups:
                return self._not_found(gid)
            return JSONResponse(self._render_group(self.dir.groups[gid], request.query_params))

        async def members(request: Request) -> Response:
            gid = request.path_params["id"]
            if gid not in self.dir.groups:
                return self._not_found(gid)
            return self._page(request, [self._member_ref(m) for m in self._live_members(gid)])

        async def deleted_users(request: Request) -> Response:
            deleted = self.dir.deleted_users.values()
            return self._page(request, [self._render_user(u, request.query_params) for u in deleted])

        async def deleted_item(request: Request) -> Response:
            uid = request.path_params["id"]
            if uid not in self.dir.deleted_users:
                return self._not_found(uid)
            return JSONResponse(self._render_user(self.dir.deleted_users[uid], request.query_params))

        async def application(request: Request) -> Response:
            if request.path_params["id"] != APP_OBJECT_ID:
                return self._not_found(request.path_params["id"])
            return JSONResponse({"id": APP_OBJECT_ID, "appId": self.app_id})

        async def sp_by_app(request: Request) -> Response:
            if request.path_params["app_id"] != self.app_id:
                return self._not_found(request.path_params["app_id"])
            return JSONResponse({"id": SERVICE_PRINCIPAL_ID, "appId": self.app_id})

        async def assigned_to(request: Request) -> Response:
            if request.path_params["id"] != SERVICE_PRINCIPAL_ID:
                return self._not_found(request.path_params["id"])
            return self._page(request, copy.deepcopy(self.dir.assignments))

        async def delta(request: Request) -> Response:
            return await self.delta(request)

        v = "/v1.0"
        return [
            Route("/{tenant}/oauth2/v2.0/token", self.token, methods=["POST"]),
            Route(f"{v}/users/delta", graph(delta)),
            Route(f"{v}/users", graph(users)),
            Route(f"{v}/users/{{id}}", graph(user)),
            Route(f"{v}/groups/delta", graph(delta)),
            Route(f"{v}/groups", graph(groups)),
            Route(f"{v}/groups/{{id}}", graph(group)),
            Route(f"{v}/groups/{{id}}/members", graph(members)),
            Route(f"{v}/directory/deletedItems/microsoft.graph.user", graph(deleted_users)),
            Route(f"{v}/directory/deletedItems/{{id}}", graph(deleted_item)),
            Route(f"{v}/applications/{{id}}", graph(application)),
            Route(f"{v}/servicePrincipals(appId='{{app_id}}')", graph(sp_by_app)),
            Route(f"{v}/servicePrincipals/{{id}}/appRoleAssignedTo", graph(assigned_to)),
        ]

    def count(self, path_prefix: str) -> int:
        """How many Graph calls went to paths starting with ``path_prefix`` (e.g. ``/v1.0/users/delta``)."""
        with self.lock:
            return sum(1 for _, p in self.requests if p.startswith(path_prefix))


@dataclass
class RunningGraph:
    fake: FakeGraph
    base_url: str

    @property
    def authority(self) -> str:
        return self.base_url

    @property
    def graph_url(self) -> str:
        return f"{self.base_url}/v1.0"


_ports = itertools.count()


@contextmanager
def serve(fake: FakeGraph) -> Iterator[RunningGraph]:
    """Serve ``fake`` with uvicorn in a thread on 127.0.0.1 (a free port) for the duration of the block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"fake-graph-{next(_ports)}")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake Graph server did not start")
        time.sleep(0.01)
    try:
        yield RunningGraph(fake, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
