"""Server-side sessions for the console and for SSO end users.

The cookie holds only a random session id (256 bits); the database holds its SHA-256, so a leaked table cannot
be replayed as cookies, and ending a session (logout, timeout, a SCIM disable of the user) is one DELETE that
takes effect on the next request of every process. Cookies are ``HttpOnly``, ``SameSite=Lax`` and ``Secure``
(configurable for local http, see :mod:`scimgrip.web.config`). Each session carries its CSRF synchroniser
token (:mod:`scimgrip.web.csrf`).

Two areas with their own cookie, so an IT admin testing SSO as an end user keeps the console session:
``console`` (kinds ``operator`` and ``tenant_admin``, cookie path ``/console``) and ``app`` (kind ``user``,
path ``/``). Timeouts: idle (no request for ``idle_timeout``) and absolute (``absolute_timeout`` after sign-in).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from scimgrip.storage.sql.web_store import OPERATOR, TENANT_ADMIN, USER, SessionRecord, WebStore
from scimgrip.web.config import WebConfig

AREAS: dict[str, tuple[str, str, frozenset[str]]] = {
    # area: cookie name, cookie path, session kinds
    "console": ("scimgrip_console", "/console", frozenset({OPERATOR, TENANT_ADMIN})),
    "app": ("scimgrip_app", "/", frozenset({USER})),
}
TOUCH_EVERY = dt.timedelta(seconds=30)


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SessionManager:
    def __init__(self, store: WebStore, config: WebConfig, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def start(self, request: Request, response: Response, area: str, kind: str, *, account_id: str | None = None,
              tenant_id: int | None = None, user_id: str | None = None,
              data: dict[str, Any] | None = None) -> SessionRecord:
        """Create a session and set its cookie on ``response`` (a new id at every sign-in: no fixation)."""
        name, path, kinds = AREAS[area]
        assert kind in kinds
        response_url = request.url
        now = self.clock()
        self.store.prune_sessions(now - self.config.idle_timeout, now - self.config.absolute_timeout)
        session_id = secrets.token_urlsafe(32)
        record = self.store.create_session(hash_session_id(session_id), kind, csrf=secrets.token_urlsafe(32),
                                           account_id=account_id, tenant_id=tenant_id, user_id=user_id,
                                           data=data, now=now)
        response.set_cookie(name, session_id, max_age=int(self.config.absolute_timeout.total_seconds()),
                            path=path, secure=self.config.secure_for(str(response_url)), httponly=True,
                            samesite="lax")
        return record

    def load(self, request: Request, area: str) -> SessionRecord | None:
        """The live session of ``area`` named by the request's cookie, or None (expired ones are deleted)."""
        name, _, kinds = AREAS[area]
        session_id = request.cookies.get(name)
        if not session_id or len(session_id) > 128:
            return None
        id_hash = hash_session_id(session_id)
        record = self.store.get_session(id_hash)
        if record is None or record.kind not in kinds:
            return None
        now = self.clock()
        if now - record.last_seen > self.config.idle_timeout or now - record.created > self.config.absolute_timeout:
            self.store.delete_session(id_hash)
            return None
        if now - record.last_seen > min(TOUCH_EVERY, self.config.idle_timeout / 10):
            self.store.touch_session(id_hash, now)
        return record

    def end(self, request: Request, response: Response, area: str) -> None:
        name, path, _ = AREAS[area]
        session_id = request.cookies.get(name)
        if session_id:
            self.store.delete_session(hash_session_id(session_id))
        self.clear_cookie(request, response, area)

    def clear_cookie(self, request: Request, response: Response, area: str) -> None:
        name, path, _ = AREAS[area]
        response.delete_cookie(name, path=path, secure=self.config.secure_for(str(request.url)), httponly=True,
                               samesite="lax")
