"""Settings from the environment (``SCIMGRIP_*``) via pydantic-settings; CLI options override them."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from scimgrip.scim.messages import Limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCIMGRIP_", extra="ignore")

    database_url: str = "sqlite:///./scimgrip.db"
    public_url: str | None = None            # e.g. https://scim.example.com (behind a proxy)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_payload_bytes: int = 1_048_576
    max_page_size: int = 1000
    default_page_size: int = 100
    max_patch_operations: int = 1000
    max_members_per_patch: int = 10_000
    max_bulk_operations: int = 1000
    request_log_retention: int = 10_000
    # abuse limits (server/limits.py). A normal Entra cycle (tens of requests per second) never reaches them.
    rate_limit_enabled: bool = True
    rate_limit_rps: float = 100.0            # per tenant, sustained, shared by every worker (database counter)
    rate_limit_burst: int = 1000             # requests a tenant may send at once above the sustained rate
    auth_failure_limit: int = 30             # failed authentications per client address and window ...
    auth_failure_window_seconds: float = 60.0
    auth_failure_delay_seconds: float = 1.0  # ... then 429 + Retry-After, answered after this delay
    body_timeout_seconds: float = 30.0       # a request body must arrive within this time (408)
    max_header_bytes: int = 16_384           # request line + headers (431/400)
    # web console and SSO sessions (web/config.py)
    cookie_secure: bool | None = None        # None: Secure unless public_url is http://127.0.0.1 or localhost
    session_idle_minutes: float = 30.0       # a session unused this long ends
    session_absolute_hours: float = 12.0     # a session ends this long after sign-in, used or not
    setup_link_hours: float = 72.0           # lifetime of an IT admin's one-time setup link

    def limits(self) -> Limits:
        return Limits(
            max_payload_bytes=self.max_payload_bytes,
            max_bulk_operations=self.max_bulk_operations,
            max_patch_operations=self.max_patch_operations,
            max_members_per_patch=self.max_members_per_patch,
            default_page_size=self.default_page_size,
            max_page_size=self.max_page_size,
            max_filter_results=self.max_page_size,
        )
