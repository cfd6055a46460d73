"""The storage interface: what every backend must do, and the guarantees it must give.

Guarantees (checked by ``tests/storage/contract.py`` against every backend):

* **Tenant isolation.** Every call takes a ``tenant_id``; nothing of another tenant is ever read or written.
* **Uniqueness by the database.** ``userName`` is unique per tenant, compared case-insensitively
  (RFC 7643 §4.1 ``caseExact: false``); enforced by a unique index, never by read-then-write, so a race gives
  exactly one winner and the loser gets :class:`~scimgrip.scim.errors.Uniqueness`.
* **Atomic, lost-update-free writes.** ``update`` runs read → ``apply`` → write in one transaction holding the
  row (``SELECT … FOR NO KEY UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite); either the whole change is stored
  or nothing is. ``meta.version`` grows by one on every change of the resource.
* **Memberships are rows.** Adding or removing members inserts or deletes rows; it never loads or rewrites the
  group. Reading a group without members never touches the membership rows.
* **Verbatim values.** The document is stored as given (after protocol-level normalisation) and returned as
  stored, because Entra diffs what it reads against what it would send.
* **Durability.** A call that returned has committed — outside a :meth:`Storage.batch`; inside one, the batch
  commits as a whole when it ends, and only then may the caller acknowledge anything.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from scimgrip.scim.filter import Filter
from scimgrip.scim.model import Change, Member, MemberDelta, StoredResource

__all__ = [
    "BatchAborted", "Change", "Member", "MemberDelta", "Page", "Query", "Storage", "StoredResource", "Tenant",
    "TokenRecord",
]


class BatchAborted(Exception):
    """A :meth:`Storage.batch` hit a lock/serialization conflict and was rolled back as a whole: nothing of it
    was stored. The caller re-runs its work without the batch (each call its own retried transaction)."""


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    created: dt.datetime
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenRecord:
    """A stored token: only the SHA-256 hash of the secret is kept."""

    id: str                      # public token id (shown in `token list`, used to revoke)
    tenant_id: int
    token_hash: str              # hex SHA-256 of the secret
    created: dt.datetime
    expires: dt.datetime | None
    revoked: dt.datetime | None
    last_used: dt.datetime | None
    description: str = ""


@dataclass(frozen=True)
class Query:
    """A list/search request after parsing (RFC 7644 §3.4.2)."""

    filter: Filter | None = None          # bound AST
    sort_by: str | None = None            # canonical attribute path, e.g. "userName", "name.familyName"
    descending: bool = False
    start_index: int = 1                  # 1-based (index pagination)
    count: int = 100                      # page size; 0 means "only totalResults"
    cursor: str | None = None             # RFC 9865: "" for the first page, else an opaque cursor
    include_members: bool = True          # groups: load members for each resource
    include_groups: bool = True           # users: load the groups of each user


@dataclass(frozen=True)
class Page:
    resources: list[StoredResource]
    total: int
    start_index: int
    next_cursor: str | None = None
    previous_cursor: str | None = None


class Storage(abc.ABC):
    """One storage backend. All methods are synchronous and thread-safe; call them from a worker thread."""

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None: ...

    # -- unit of work -----------------------------------------------------------------------------------------
    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Run the writes of this thread's calls, until the block ends, in ONE transaction, each call in its own
        savepoint (the ``/Bulk`` operations of one request, RFC 7644 §3.7).

        Why: one commit — one fsync — per BulkRequest instead of one per operation. What stays as without it:
        each call is atomic on its own and independent — a call that raises is rolled back to its savepoint
        alone and the others stand (RFC 7644 §3.7 does not make a Bulk request atomic); reads inside the block
        see the block's earlier writes (a ``bulkId`` reference to a resource created just before). What
        differs: nothing is committed — nor visible to others — until the block ends without an exception;
        then everything commits at once, and only then may the caller acknowledge the calls (durability as
        without a batch). An exception out of the block rolls everything back. A lock or serialization
        conflict inside the block cannot be retried per call: the whole batch is rolled back and
        :class:`BatchAborted` raised, for the caller to re-run its calls without a batch. The batch holds the
        write lock (SQLite) or its row locks (PostgreSQL) until it ends: keep it bounded (a BulkRequest is
        bounded by ``maxOperations``). Nested ``batch()`` blocks join the outer one. The default does nothing
        (every call commits on its own), which is correct for a backend without transactions to share."""
        return contextlib.nullcontext()

    # -- tenants -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_tenant(self, name: str, settings: dict[str, Any] | None = None) -> Tenant:
        """Raises ``Uniqueness`` if the name exists (case-insensitive)."""

    @abc.abstractmethod
    def get_tenant(self, name: str) -> Tenant | None: ...

    @abc.abstractmethod
    def get_tenant_by_id(self, tenant_id: int) -> Tenant | None: ...

    @abc.abstractmethod
    def list_tenants(self) -> list[Tenant]: ...

    @abc.abstractmethod
    def update_tenant_settings(self, tenant_id: int, settings: dict[str, Any]) -> Tenant:
        """Replace the tenant's settings document (e.g. its extension schemas). Raises ``NotFound``."""

    @abc.abstractmethod
    def delete_tenant(self, tenant_id: int) -> None:
        """Delete the tenant with all its resources, memberships, tokens and request log."""

    @abc.abstractmethod
    def count_tenants(self) -> int: ...

    # -- tokens ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_token(self, tenant_id: int, token_id: str, token_hash: str, expires: dt.datetime | None,
                  description: str = "") -> TokenRecord: ...

    @abc.abstractmethod
    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token whose hash is ``token_hash`` (an indexed equality lookup), revoked or not."""

    @abc.abstractmethod
    def list_tokens(self, tenant_id: int) -> list[TokenRecord]: ...

    @abc.abstractmethod
    def revoke_token(self, tenant_id: int, token_id: str) -> bool:
        """Mark revoked; False if no such token in this tenant."""

    @abc.abstractmethod
    def touch_tokens(self, last_used: dict[str, dt.datetime]) -> None:
        """Record last-used times (token id -> time), batched by the caller."""

    # -- resources ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def create(self, tenant_id: int, resource_type: str, doc: dict[str, Any],
               members: Sequence[str] = ()) -> StoredResource:
        """Insert a resource with a new id; for groups also its members. Raises ``Uniqueness`` on a
        duplicate userName, ``InvalidValue`` if a member id does not exist in the tenant."""

    @abc.abstractmethod
    def get(self, tenant_id: int, resource_type: str, resource_id: str, *, include_members: bool = True,
            include_groups: bool = True) -> StoredResource:
        """Raises ``NotFound``."""

    @abc.abstractmethod
    def update(self, tenant_id: int, resource_type: str, resource_id: str,
               apply: Callable[[StoredResource], Change], *, expected_version: int | None = None,
               needs_members: bool = False) -> StoredResource:
        """Atomically read, ``apply`` and write one resource (PATCH and PUT).

        ``apply`` gets the current resource (with members only if ``needs_members``) and returns the new doc
        plus a membership delta. Raises ``NotFound``, ``PreconditionFailed`` if ``expected_version`` is given
        and differs, ``Uniqueness``, or whatever ``apply`` raises (then nothing is written). A change that
        leaves doc and members as they were does not bump the version. Returns the stored resource
        (members are not loaded in the result unless ``needs_members``).
        """

    @abc.abstractmethod
    def delete(self, tenant_id: int, resource_type: str, resource_id: str, *,
               expected_version: int | None = None) -> None:
        """Delete the resource and every membership row it appears in (as group or as member)."""

    @abc.abstractmethod
    def search(self, tenant_id: int, resource_type: str, query: Query) -> Page:
        """Filter, sort and page. Filters on userName, externalId, displayName, id, active, meta dates,
        emails/phoneNumbers values and members.value are SQL; anything else is evaluated in memory on the
        SQL-narrowed candidates (the same AST)."""

    @abc.abstractmethod
    def iter_all(self, tenant_id: int, resource_type: str, batch: int = 1000) -> Iterator[StoredResource]:
        """Stream every resource of a type (export), members included, in storage order."""

    @abc.abstractmethod
    def existing_ids(self, tenant_id: int, ids: Sequence[str]) -> dict[str, str]:
        """Which of ``ids`` exist in the tenant: id -> resource type."""

    # -- request log -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def append_request_log(self, entries: Sequence[dict[str, Any]]) -> None:
        """Insert request-log rows in one transaction (keys: tenant_id, at, method, path, status,
        duration_ms, outcome, detail, request_body, response_body)."""

    @abc.abstractmethod
    def list_request_log(self, tenant_id: int, limit: int = 100) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def prune_request_log(self, tenant_id: int, keep: int) -> int:
        """Keep the newest ``keep`` rows of the tenant; return how many were deleted."""
