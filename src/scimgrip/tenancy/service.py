"""Tenants and their tokens: create, list, delete; issue, rotate (several live at once), expire, revoke.

The Tenant URL of tenant ``acme`` is ``<public base>/scim/v2/tenants/acme``; a request to it must carry a
live token of that same tenant. A token of another tenant, a revoked or an expired one gets 401 — the same
answer as an unknown token, so a caller learns nothing about other tenants.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from scimgrip.scim.errors import InvalidValue, NotFound, Unauthorized
from scimgrip.storage.base import Storage, Tenant, TokenRecord
from scimgrip.tenancy.tokens import hash_token, hashes_equal, looks_like_token, new_token, new_token_id

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class IssuedToken:
    record: TokenRecord
    secret: str


def tenant_url(base_url: str, tenant: str) -> str:
    return f"{base_url.rstrip('/')}/scim/v2/tenants/{tenant}"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TenantService:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def create_tenant(self, name: str) -> tuple[Tenant, IssuedToken]:
        if not TENANT_NAME.match(name):
            raise InvalidValue("tenant names are 1-63 characters: lower-case letters, digits, '-' and '_', "
                               "starting with a letter or digit")
        tenant = self.storage.create_tenant(name)
        return tenant, self.issue_token(tenant.name)

    def require(self, name: str) -> Tenant:
        tenant = self.storage.get_tenant(name)
        if tenant is None:
            raise NotFound(f"no tenant {name!r}")
        return tenant

    def delete_tenant(self, name: str) -> None:
        self.storage.delete_tenant(self.require(name).id)

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
        record = self.storage.find_token(digest)
        tenant = self.storage.get_tenant(tenant_name)
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
