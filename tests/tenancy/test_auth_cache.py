"""The tenant cache of TenantService.authenticate: fewer statements, and never a request the database refuses.

"Another process" is a second Storage on the same database URL, as the CLI is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from scimgrip.scim.errors import Unauthorized
from scimgrip.storage import open_storage
from scimgrip.storage.base import Storage
from scimgrip.tenancy.service import TenantService


class Counting:
    """A Storage proxy that counts get_tenant calls."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.get_tenant_calls = 0

    def get_tenant(self, name: str) -> Any:
        self.get_tenant_calls += 1
        return self.inner.get_tenant(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def other(db_url: str, storage: Storage) -> Iterator[TenantService]:
    """A TenantService on its own Storage (own pool), standing for the CLI process."""
    s = open_storage(db_url)
    try:
        yield TenantService(s, tenant_cache_ttl=0)
    finally:
        s.close()


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def test_cache_saves_the_tenant_read(storage: Storage) -> None:
    counting = Counting(storage)
    svc = TenantService(counting)  # type: ignore[arg-type]
    tenant, issued = svc.create_tenant("cached")
    for _ in range(5):
        got, record = svc.authenticate("cached", bearer(issued.secret))
        assert got.id == tenant.id and record.id == issued.record.id
    assert counting.get_tenant_calls == 2        # create_tenant's require + the first authenticate


def test_revocation_by_another_process_is_instant(storage: Storage, other: TenantService) -> None:
    svc = TenantService(storage)
    _, issued = svc.create_tenant("revoke")
    second = svc.issue_token("revoke")
    svc.authenticate("revoke", bearer(issued.secret))           # warm the cache
    other.revoke_token("revoke", issued.record.id)
    with pytest.raises(Unauthorized):
        svc.authenticate("revoke", bearer(issued.secret))
    assert svc.authenticate("revoke", bearer(second.secret))[1].id == second.record.id


def test_deleted_tenant_is_refused_at_once(storage: Storage, other: TenantService) -> None:
    svc = TenantService(storage)
    _, issued = svc.create_tenant("gone")
    svc.authenticate("gone", bearer(issued.secret))
    other.delete_tenant("gone")
    with pytest.raises(Unauthorized):
        svc.authenticate("gone", bearer(issued.secret))


def test_recreated_tenant_is_reread(storage: Storage, other: TenantService) -> None:
    svc = TenantService(storage)
    _, old = svc.create_tenant("again")
    svc.authenticate("again", bearer(old.secret))            # caches the old tenant row
    other.delete_tenant("again")
    new_tenant, new = other.create_tenant("again")          # same name, new id, in another process
    got, _ = svc.authenticate("again", bearer(new.secret))
    assert got.id == new_tenant.id
    with pytest.raises(Unauthorized):
        svc.authenticate("again", bearer(old.secret))


def test_changes_in_this_process_empty_every_cache(storage: Storage) -> None:
    a = TenantService(storage)
    b = TenantService(storage)
    tenant, issued = a.create_tenant("local")
    a.authenticate("local", bearer(issued.secret))
    storage.update_tenant_settings(tenant.id, {"extensions": []})
    b.delete_tenant("local")                                 # another service object, same process
    assert a.cache.get("local") is None


def test_ttl_zero_disables_the_cache(storage: Storage) -> None:
    counting = Counting(storage)
    svc = TenantService(counting, tenant_cache_ttl=0)  # type: ignore[arg-type]
    _, issued = svc.create_tenant("nocache")
    before = counting.get_tenant_calls
    svc.authenticate("nocache", bearer(issued.secret))
    svc.authenticate("nocache", bearer(issued.secret))
    assert counting.get_tenant_calls - before == 2


def test_failed_authentication_still_names_the_tenant(storage: Storage) -> None:
    svc = TenantService(storage)
    tenant, _ = svc.create_tenant("logged")
    with pytest.raises(Unauthorized) as err:
        svc.authenticate("logged", bearer("sgt_" + "x" * 40))
    assert err.value.tenant_id == tenant.id
