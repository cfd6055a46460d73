"""Tenants and their tokens: create, list, delete; issue, rotate (several live at once), expire, revoke.

The Tenant URL of tenant ``acme`` is ``<public base>/scim/v2/tenants/acme``; a request to it must carry a
live token of that same tenant. A token of another tenant, a revoked or an expired one gets 401 — the same
answer as an unknown token, so a caller learns nothing about other tenants.

**Authentication cost.** Every request reads its token row (one indexed statement), so a revocation, an expiry
or a deleted tenant (whose tokens go with it) takes effect on the very next request, whichever process made
the change (the CLI is another process). The *tenant* row, which only changes when a tenant is created,
deleted or given extension schemas, is cached per process for ``tenant_cache_ttl`` seconds (default 5; 0
disables the cache). The cache can never admit a request the database would refuse:

* a token whose ``tenant_id`` differs from the cached tenant's id (the tenant was deleted and re-created under
  the same name elsewhere) re-reads the tenant before answering;
* a process-wide generation counter, bumped by every tenant change made through a :class:`TenantService` of
  this process, empties every cache of the process at once;
* what may be stale for up to the TTL is only a tenant's *settings* (extension schemas) changed by another
  process (``scimgrip tenant extend``).

The profile in docs/performance.md shows why: the token and tenant reads were two of the four to five
SQLAlchemy statements of a simple GET, each costing far more in SQLAlchemy than in the database.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from dataclasses import dataclass

from scimgrip.scim.errors import InvalidValue, NotFound, Unauthorized
from scimgrip.storage.base import Storage, Tenant, TokenRecord
from scimgrip.tenancy.tokens import hash_token, hashes_equal, looks_like_token, new_token, new_token_id

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TENANT_CACHE_TTL = 5.0

_generation_lock = threading.Lock()
_generation = 0


def tenant_generation() -> int:
    """The process-wide generation of tenant rows: any change through a TenantService of this process bumps it."""
    return _generation


def invalidate_tenant_caches() -> None:
    """Empty the tenant cache of every TenantService in this process (call after changing a tenant row)."""
    global _generation
    with _generation_lock:
        _generation += 1


class TenantCache:
    """Tenants by lower-cased name, each entry valid for ``ttl`` seconds and for one generation."""

    def __init__(self, ttl: float = TENANT_CACHE_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Tenant, float, int]] = {}

    def get(self, name: str) -> Tenant | None:
        hit = self._entries.get(name.lower())
        if hit is None:
            return None
        tenant, at, gen = hit
        if gen != _generation or time.monotonic() - at > self.ttl:
            self._entries.pop(name.lower(), None)
            return None
        return tenant

    def put(self, name: str, tenant: Tenant, generation: int) -> None:
        if self.ttl > 0:
            if len(self._entries) > 10_000:        # bounded: many tenants simply cycle through
                self._entries.clear()
            self._entries[name.lower()] = (tenant, time.monotonic(), generation)

    def drop(self, name: str) -> None:
        self._entries.pop(name.lower(), None)


@dataclass(frozen=True)
class IssuedToken:
    record: TokenRecord
    secret: str


def tenant_url(base_url: str, tenant: str) -> str:
    return f"{base_url.rstrip('/')}/scim/v2/tenants/{tenant}"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TenantService:
    def __init__(self, storage: Storage, *, tenant_cache_ttl: float = TENANT_CACHE_TTL) -> None:
        self.storage = storage
        self.cache = TenantCache(tenant_cache_ttl)

    def _tenant(self, name: str, *, fresh: bool = False) -> Tenant | None:
        """The tenant called ``name``, from the cache unless ``fresh``."""
        if "\x00" in name:   # no tenant has one, and PostgreSQL text cannot hold it (was a 500)
            return None
        if not fresh:
            hit = self.cache.get(name)
            if hit is not None:
                return hit
        generation = _generation                    # read before the row: a concurrent bump makes it stale
        tenant = self.storage.get_tenant(name)
        if tenant is None:
            self.cache.drop(name)
        else:
            self.cache.put(name, tenant, generation)
        return tenant

    def create_tenant(self, name: str) -> tuple[Tenant, IssuedToken]:
        if not TENANT_NAME.match(name):
            raise InvalidValue("tenant names are 1-63 characters: lower-case letters, digits, '-' and '_', "
                               "starting with a letter or digit")
        tenant = self.storage.create_tenant(name)
        invalidate_tenant_caches()
        return tenant, self.issue_token(tenant.name)

    def require(self, name: str) -> Tenant:
        tenant = self.storage.get_tenant(name)
        if tenant is None:
            raise NotFound(f"no tenant {name!r}")
        return tenant

    def delete_tenant(self, name: str) -> None:
        self.storage.delete_tenant(self.require(name).id)
        invalidate_tenant_caches()

    def issue_token(self, tenant_name: str, *, expires_in_days: float | None = None,
                    description: str = "") -> IssuedToken:
        tenant = self.require(tenant_name)
        secret = new_token()
        expires = utcnow() + dt.timedelta(days=expires_in_days) if expires_in_days else None
        record = self.storage.add_token(tenant.id, new_token_id(), hash_token(secret), expires, description)
        return IssuedToken(record, secret)

    def list_tokens(self, tenant_name: str) -> list[TokenRecord]:
        return self.storage.list_tokens(self.require(tenant_name).id)

    def revoke_token(self, tenant_name: str, token_id: str) -> None:
        if not self.storage.revoke_token(self.require(tenant_name).id, token_id):
            raise NotFound(f"no token {token_id!r} in tenant {tenant_name!r}")

    def authenticate(self, tenant_name: str, authorization: str | None) -> tuple[Tenant, TokenRecord]:
        """Check ``Authorization: Bearer <token>`` against ``tenant_name``; 401 on any mismatch."""
        if not authorization:
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <Secret Token>'",
                               headers={"WWW-Authenticate": 'Bearer realm="scimgrip"'})
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not looks_like_token(token):
            raise Unauthorized("the Authorization header must be 'Bearer <Secret Token>'",
                               headers={"WWW-Authenticate": 'Bearer realm="scimgrip", error="invalid_request"'})
        digest = hash_token(token)
        record = self.storage.find_token(digest)   # every request: revocation and expiry act at once
        tenant = self._tenant(tenant_name)
        if record is not None and tenant is not None and record.tenant_id != tenant.id:
            tenant = self._tenant(tenant_name, fresh=True)   # re-created elsewhere under the same name?
        now = utcnow()
        if (record is None or tenant is None or record.tenant_id != tenant.id
                or not hashes_equal(record.token_hash, digest)
                or record.revoked is not None
                or (record.expires is not None and record.expires <= now)):
            exc = Unauthorized("invalid, revoked or expired token for this Tenant URL",
                               headers={"WWW-Authenticate": 'Bearer realm="scimgrip", error="invalid_token"'})
            # for the tenant's own request log (a failed Test Connection must be visible to its admin)
            exc.tenant_id = tenant.id if tenant is not None else None
            raise exc
        return tenant, record
