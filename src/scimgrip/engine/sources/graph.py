"""Microsoft Graph as a source: the same reads Entra's provisioning service makes, with delta queries.

Entra's incremental cycle is a Graph delta query (CYC-2); reading ``/users/delta`` and ``/groups/delta``
lets an incremental cycle cost as much as the changes, not the tenant. The watermark is the pair of
``@odata.deltaLink`` URLs (JSON). Graph fields are mapped to Entra's vocabulary (``id`` → ``objectId``,
``businessPhones[0]`` → ``telephoneNumber``, ``mobilePhone`` → ``mobile``, ``manager.id`` → ``manager``).

Deletes: a delta ``@removed`` with ``reason == "deleted"`` is a hard delete (a tombstone, ``deleted=True``);
any other reason is a soft delete, reported with the object's attributes read from
``/directory/deletedItems`` plus ``softDeleted: true`` and ``deletedDateTime`` (the engine derives
``IsSoftDeleted``, SCP-4). ``read_all`` also reports the soft-deleted users, so a full cycle can disable them.
Throttling (429, 503, 504) honours ``Retry-After``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from scimgrip.engine.model import Assignments, ChangeSet, ObjectType, Source, SourceObject

USER_FIELDS = ("id", "userPrincipalName", "displayName", "givenName", "surname", "mail", "mailNickname",
               "otherMails", "businessPhones", "mobilePhone", "streetAddress", "city", "state", "postalCode",
               "country", "employeeId", "jobTitle", "department", "accountEnabled")
GROUP_FIELDS = ("id", "displayName", "mailNickname", "description")
# Graph name → Entra (provisioning) name, where they differ.
_RENAMED = {"id": "objectId", "mobilePhone": "mobile"}
RETRY_STATUSES = frozenset({429, 503, 504})


class GraphError(RuntimeError):
    """A Graph or token endpoint call failed (after retries)."""

    def __init__(self, status: int, code: str, message: str, url: str = "") -> None:
        super().__init__(f"Graph {status} {code}: {message}" + (f" ({url})" if url else ""))
        self.status = status
        self.code = code
        self.message = message
        self.url = url


def user_attributes(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Graph user resource → attributes in Entra's vocabulary (absent/null fields omitted)."""
    out: dict[str, Any] = {}
    for key in USER_FIELDS:
        value = item.get(key)
        if key == "businessPhones":
            if value:
                out["telephoneNumber"] = value[0]
            continue
        if value is None or value == [] or value == "":
            continue
        out[_RENAMED.get(key, key)] = value
    manager = item.get("manager")
    if isinstance(manager, Mapping) and manager.get("id"):
        out["manager"] = manager["id"]
    deleted_at = item.get("deletedDateTime")
    if deleted_at:
        out["softDeleted"] = True
        out["deletedDateTime"] = deleted_at
    return out


def group_attributes(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Graph group resource → attributes in Entra's vocabulary."""
    out = {_RENAMED.get(k, k): item[k] for k in GROUP_FIELDS if item.get(k) not in (None, "")}
    if item.get("deletedDateTime"):
        out["softDeleted"] = True
        out["deletedDateTime"] = item["deletedDateTime"]
    return out


def _retry_after(response: httpx.Response, attempt: int) -> float:
    header = response.headers.get("Retry-After")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    return min(60.0, 2.0 ** attempt)


class GraphSource(Source):
    """Users, groups, memberships and app assignments of an Entra tenant, read through Microsoft Graph."""

    kind = "graph"

    def __init__(self, tenant_id: str, client_id: str, client_secret: str, *,
                 service_principal_id: str | None = None, app_object_id: str | None = None,
                 authority: str = "https://login.microsoftonline.com",
                 graph_url: str = "https://graph.microsoft.com/v1.0",
                 scope: str = "https://graph.microsoft.com/.default",
                 http: httpx.Client | None = None, page_size: int = 999, max_retries: int = 6,
                 timeout: float = 60.0, include_soft_deleted: bool = True,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._client_secret = client_secret
        self._service_principal_id = service_principal_id
        self.app_object_id = app_object_id
        self.authority = authority.rstrip("/")
        self.graph_url = graph_url.rstrip("/")
        self.scope = scope
        self.page_size = page_size
        self.max_retries = max_retries
        self.include_soft_deleted = include_soft_deleted
        self._sleep = sleep
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._token: str | None = None
        self._token_expires = 0.0

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _access_token(self) -> str:
        if self._token is not None and time.monotonic() < self._token_expires:
            return self._token
        url = f"{self.authority}/{quote(self.tenant_id, safe='')}/oauth2/v2.0/token"
        form = {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self._client_secret, "scope": self.scope}
        response = self._send("POST", url, data=form)
        if response.status_code != 200:
            raise _error(response, url)
        body = response.json()
        self._token = str(body["access_token"])
        # cached until a minute before expiry (Graph tokens live ~1 hour)
        self._token_expires = time.monotonic() + max(0.0, float(body.get("expires_in", 3600)) - 60)
        return self._token

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request with throttling/transient retries (Retry-After honoured)."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, url, **kwargs)
            except (httpx.TimeoutException, httpx.NetworkError) as exc:
                if attempt >= self.max_retries:
                    raise GraphError(0, type(exc).__name__, str(exc), url) from exc
                self._sleep(min(60.0, 2.0 ** attempt))
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                self._sleep(_retry_after(response, attempt))
                attempt += 1
                continue
            return response

    def _get(self, url: str, params: Mapping[str, str] | None = None, *, allow_404: bool = False) -> Any:
        if not url.startswith(("http://", "https://")):
            url = self.graph_url + url
        refreshed = False
        while True:
            headers = {"Authorization": f"Bearer {self._access_token()}", "Accept": "application/json"}
            response = self._send("GET", url, params=params, headers=headers)
            if response.status_code == 401 and not refreshed:   # token revoked or expired early
                self._token = None
                refreshed = True
                continue
            if allow_404 and response.status_code == 404:
                return None
            if response.status_code != 200:
                raise _error(response, url)
            return response.json()

    def _pages(self, url: str, params: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every page of a collection, following ``@odata.nextLink`` (which carries the query itself)."""
        page: dict[str, Any] = self._get(url, params)
        while True:
            yield page
            next_link = page.get("@odata.nextLink")
            if not next_link:
                return
            page = self._get(next_link)

    def _items(self, url: str, params: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        for page in self._pages(url, params):
            yield from page.get("value", [])

    # -- reads ---------------------------------------------------------------------------------------------

    def _user_params(self) -> dict[str, str]:
        return {"$select": ",".join(USER_FIELDS), "$expand": "manager($select=id)", "$top": str(self.page_size)}

    def _group_params(self) -> dict[str, str]:
        return {"$select": ",".join(GROUP_FIELDS), "$top": str(self.page_size)}

    def members(self, group_id: str) -> tuple[str, ...]:
        """Direct members (any object type) of a group."""
        url = f"/groups/{quote(group_id, safe='')}/members"
        items = self._items(url, {"$select": "id", "$top": str(self.page_size)})
        return tuple(m["id"] for m in items if _is_principal(m))

    def _user(self, item: Mapping[str, Any]) -> SourceObject:
        return SourceObject("User", item["id"], user_attributes(item))

    def _group(self, item: Mapping[str, Any], members: tuple[str, ...]) -> SourceObject:
        return SourceObject("Group", item["id"], group_attributes(item), members=members)

    def soft_deleted_users(self) -> Iterator[SourceObject]:
        """Users in the recycle bin (``/directory/deletedItems``), flagged ``softDeleted``."""
        params = {"$select": ",".join((*USER_FIELDS, "deletedDateTime")), "$top": str(self.page_size)}
        for item in self._items("/directory/deletedItems/microsoft.graph.user", params):
            obj = self._user(item)
            yield SourceObject("User", obj.id, {**obj.attributes, "softDeleted": True})

    def read_all(self) -> Iterator[SourceObject]:
        for item in self._items("/users", self._user_params()):
            yield self._user(item)
        if self.include_soft_deleted:
            yield from self.soft_deleted_users()
        for item in self._items("/groups", self._group_params()):
            yield self._group(item, self.members(item["id"]))

    def service_principal_id(self) -> str | None:
        """The app's service principal (given, or found from ``app_object_id``); None when neither is set."""
        if self._service_principal_id is None and self.app_object_id is not None:
            app = self._get(f"/applications/{quote(self.app_object_id, safe='')}", {"$select": "appId"})
            sp = self._get(f"/servicePrincipals(appId='{quote(str(app['appId']), safe='')}')", {"$select": "id"})
            self._service_principal_id = str(sp["id"])
        return self._service_principal_id

    def assignments(self) -> Assignments:
        sp = self.service_principal_id()
        if sp is None:
            return Assignments()
        users: set[str] = set()
        groups: set[str] = set()
        url = f"/servicePrincipals/{quote(sp, safe='')}/appRoleAssignedTo"
        for item in self._items(url, {"$select": "principalId,principalType", "$top": str(self.page_size)}):
            kind = item.get("principalType")
            if kind == "User":
                users.add(item["principalId"])
            elif kind == "Group":
                groups.add(item["principalId"])
        return Assignments(users=frozenset(users), groups=frozenset(groups))

    # -- delta ---------------------------------------------------------------------------------------------

    def _delta_params(self, object_type: ObjectType) -> dict[str, str]:
        if object_type == "User":
            return {"$select": ",".join(USER_FIELDS), "$expand": "manager($select=id)"}
        return {"$select": ",".join((*GROUP_FIELDS, "members"))}

    def _latest(self, object_type: ObjectType) -> str:
        path = "/users/delta" if object_type == "User" else "/groups/delta"
        params = {**self._delta_params(object_type), "$deltatoken": "latest"}
        return self._delta_round(path, params, object_type)[1]

    def watermark(self) -> str:
        """The delta links for "now" (``$deltatoken=latest``: no objects are read)."""
        return json.dumps({"users": self._latest("User"), "groups": self._latest("Group")})

    def _delta_round(self, url: str, params: Mapping[str, str] | None,
                     object_type: ObjectType) -> tuple[dict[str, dict[str, Any]], str]:
        """Follow a delta round to its ``@odata.deltaLink``; items merged per id, in first-seen order.

        A group's ``members@delta`` may be split over several pages: additions and removals accumulate in
        ``_added``/``_removed``.
        """
        merged: dict[str, dict[str, Any]] = {}
        for page in self._pages(url, params):
            for item in page.get("value", []):
                current = merged.setdefault(item["id"], {"_added": [], "_removed": []})
                for key, value in item.items():
                    if key == "members@delta":
                        for member in filter(_is_principal, value):
                            (current["_removed"] if "@removed" in member else current["_added"]).append(member["id"])
                    elif key == "manager@delta":
                        live = [m["id"] for m in value if "@removed" not in m]
                        current["manager"] = {"id": live[-1]} if live else None
                    else:
                        current[key] = value
                if "@removed" not in item:
                    current.pop("@removed", None)
            if "@odata.deltaLink" in page:
                return merged, str(page["@odata.deltaLink"])
        raise GraphError(200, "NoDeltaLink", f"delta round ended without @odata.deltaLink ({object_type})", url)

    def _removed(self, object_type: ObjectType, object_id: str, reason: str) -> SourceObject:
        if reason != "deleted":
            fields = USER_FIELDS if object_type == "User" else GROUP_FIELDS
            item = self._get(f"/directory/deletedItems/{quote(object_id, safe='')}",
                             {"$select": ",".join((*fields, "deletedDateTime"))}, allow_404=True)
            if item is not None:   # still in the recycle bin: a soft delete
                attributes = user_attributes(item) if object_type == "User" else group_attributes(item)
                attributes["softDeleted"] = True
                return SourceObject(object_type, object_id, attributes,
                                    members=() if object_type == "Group" else None)
        return SourceObject(object_type, object_id, {"objectId": object_id}, deleted=True)

    def _changed_user(self, item: dict[str, Any], initial: bool) -> SourceObject:
        # Graph may return only the changed properties of an updated user: read it whole unless complete.
        if initial or all(k in item for k in USER_FIELDS):
            return self._user(item)
        full = self._get(f"/users/{quote(item['id'], safe='')}",
                         {k: v for k, v in self._user_params().items() if k != "$top"}, allow_404=True)
        return self._user(full if full is not None else item)

    def _changed_group(self, item: dict[str, Any], initial: bool) -> SourceObject:
        if initial:   # the initial round lists every member as an addition
            removed = set(item["_removed"])
            return self._group(item, tuple(m for m in dict.fromkeys(item["_added"]) if m not in removed))
        if not all(k in item for k in GROUP_FIELDS):
            full = self._get(f"/groups/{quote(item['id'], safe='')}", {"$select": ",".join(GROUP_FIELDS)},
                             allow_404=True)
            item = {**item, **(full or {})}
        # members@delta holds only the changes; SourceObject.members is the whole direct member list.
        return self._group(item, self.members(item["id"]))

    def read_changes(self, watermark: str) -> ChangeSet:
        """Changes since ``watermark`` (the delta links); an empty watermark starts a full delta round.

        With an empty watermark the result is the whole directory (``complete=True``).
        """
        initial = not watermark
        if initial:
            links: dict[str, Any] = {"users": None, "groups": None}
        else:
            try:
                links = json.loads(watermark)
                if not isinstance(links, dict) or not links.get("users") or not links.get("groups"):
                    raise ValueError
            except ValueError:
                raise ValueError(f"not a Graph delta watermark: {watermark[:80]!r}") from None
        objects: list[SourceObject] = []
        new_links: dict[str, str] = {}
        rounds: tuple[tuple[str, ObjectType, str], ...] = (("users", "User", "/users/delta"),
                                                            ("groups", "Group", "/groups/delta"))
        for key, ot, path in rounds:
            if links[key]:
                merged, new_links[key] = self._delta_round(links[key], None, ot)
            else:
                merged, new_links[key] = self._delta_round(path, self._delta_params(ot), ot)
            for object_id, item in merged.items():
                removed = item.get("@removed")
                if removed is not None:
                    if not initial:
                        objects.append(self._removed(ot, object_id, str(removed.get("reason", ""))))
                elif ot == "User":
                    objects.append(self._changed_user(item, initial))
                else:
                    objects.append(self._changed_group(item, initial))
            if initial and ot == "User" and self.include_soft_deleted:
                # a complete read must include soft-deleted users, or the engine would take them as hard deletes
                objects.extend(self.soft_deleted_users())
        return ChangeSet(objects=objects, watermark=json.dumps(new_links), assignments=self.assignments(),
                         complete=initial)

    def close(self) -> None:
        if self._own_http:
            self._http.close()


def _is_principal(member: Mapping[str, Any]) -> bool:
    """Users and groups; a group's devices, contacts and service principals are not provisioned."""
    kind = member.get("@odata.type")
    return kind is None or kind in ("#microsoft.graph.user", "#microsoft.graph.group")


def _error(response: httpx.Response, url: str) -> GraphError:
    code, message = "HttpError", response.text[:300]
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):   # Graph: {"error": {"code", "message"}}
            code = str(body["error"].get("code", code))
            message = str(body["error"].get("message", message))
        elif "error" in body:                        # token endpoint: {"error", "error_description"}
            code = str(body["error"])
            message = str(body.get("error_description", message))
    return GraphError(response.status_code, code, message, url)
