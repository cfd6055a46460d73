"""Settings of the browser-facing layer, taken from :class:`scimgrip.settings.Settings` (``SCIMGRIP_*``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import urlsplit

from scimgrip.settings import Settings

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def default_cookie_secure(url: str) -> bool:
    """Secure cookies unless the URL is plain http on the loopback (local development and tests)."""
    parts = urlsplit(url)
    return not (parts.scheme == "http" and (parts.hostname or "") in _LOCAL_HOSTS)


@dataclass(frozen=True)
class WebConfig:
    public_url: str | None = None
    cookie_secure: bool | None = True      # None: decided per request (Secure unless http on the loopback)
    idle_timeout: dt.timedelta = dt.timedelta(minutes=30)
    absolute_timeout: dt.timedelta = dt.timedelta(hours=12)
    setup_link_lifetime: dt.timedelta = dt.timedelta(hours=72)
    pending_login_lifetime: dt.timedelta = dt.timedelta(minutes=10)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, public_url: str | None = None) -> WebConfig:
        s = settings or Settings()
        url = public_url or s.public_url
        secure = s.cookie_secure if s.cookie_secure is not None else (default_cookie_secure(url) if url else None)
        return cls(public_url=url, cookie_secure=secure,
                   idle_timeout=dt.timedelta(minutes=s.session_idle_minutes),
                   absolute_timeout=dt.timedelta(hours=s.session_absolute_hours),
                   setup_link_lifetime=dt.timedelta(hours=s.setup_link_hours))

    def secure_for(self, request_url: str) -> bool:
        return self.cookie_secure if self.cookie_secure is not None else default_cookie_secure(request_url)
