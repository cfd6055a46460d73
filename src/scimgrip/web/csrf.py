"""CSRF protection for every form (OWASP CSRF cheat sheet).

* Signed-in pages: the **synchroniser token** of the session (``web_sessions.csrf``), sent as the hidden form
  field ``csrf_token`` and compared in constant time.
* Sign-in and setup pages, where no session exists yet: a **double-submit cookie** (``scimgrip_csrf``, random,
  HttpOnly) that the form must repeat; it prevents login CSRF.
* Defence in depth: a POST whose ``Origin`` header names another origin is refused outright.

A refused POST is a 403 page; nothing is changed.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

FIELD = "csrf_token"
PRE_SESSION_COOKIE = "scimgrip_csrf"


class CsrfError(Exception):
    """The POST carried no valid CSRF token (answered with 403)."""


def tokens_match(sent: str | None, expected: str | None) -> bool:
    if not sent or not expected:
        return False
    return hmac.compare_digest(sent.encode(), expected.encode())


def same_origin(request: Request, public_url: str | None = None) -> bool:
    """False only when the browser says the request comes from another origin (host and port compared with the
    ``Host`` header, which a reverse proxy keeps, or with the public URL)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc.lower()
    ours = {request.headers.get("host", "").lower()}
    if public_url:
        ours.add(urlsplit(public_url).netloc.lower())
    return bool(netloc) and netloc in ours


async def checked_form(request: Request, expected: str | None, public_url: str | None = None) -> FormData:
    """The POSTed form, if its ``csrf_token`` equals ``expected`` and the origin is ours; else CsrfError."""
    if not same_origin(request, public_url):
        raise CsrfError("cross-origin form submission")
    form = await request.form()
    sent = form.get(FIELD)
    if not isinstance(sent, str) or not tokens_match(sent, expected):
        raise CsrfError("missing or wrong CSRF token")
    return form


def pre_session_token(request: Request) -> str:
    """The double-submit token of this browser (new if it has none; set it with :func:`set_pre_session`)."""
    current = request.cookies.get(PRE_SESSION_COOKIE)
    if current and 20 <= len(current) <= 100:
        return current
    return secrets.token_urlsafe(32)


def set_pre_session(response: Response, token: str, *, secure: bool, path: str = "/") -> None:
    response.set_cookie(PRE_SESSION_COOKIE, token, max_age=3600, path=path, secure=secure, httponly=True,
                        samesite="lax")
