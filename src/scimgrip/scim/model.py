"""The resource model shared by the protocol core and storage: a stored resource, its memberships, a change.

These are plain values, no I/O. They live in the protocol core so that PATCH (``scim.patch``) can turn
operations into a :class:`Change` without importing the storage layer; ``storage.base`` re-exports them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Member:
    """One membership row (RFC 7643 §4.2 ``members``): ``value`` is the member's id."""

    value: str
    type: str | None = None      # "User" / "Group"; filled by storage from the member resource
    display: str | None = None   # filled on read from the member's displayName/userName


@dataclass(frozen=True)
class StoredResource:
    """A resource as stored. ``doc`` holds the attributes (no ``id``/``meta``; no ``members`` for groups)."""

    id: str
    resource_type: str
    doc: dict[str, Any]
    version: int
    created: dt.datetime
    last_modified: dt.datetime
    members: list[Member] | None = None   # groups only, and only when asked for
    groups: list[Member] | None = None    # users only: the groups it is a direct member of, when asked for


@dataclass(frozen=True)
class MemberDelta:
    """A change to a group's membership computed by PATCH/PUT, applied as row inserts and deletes."""

    add: Sequence[str] = ()            # member ids to add (idempotent: an existing member is not duplicated)
    remove: Sequence[str] = ()         # member ids to remove (absent ones are ignored)
    remove_all: bool = False           # applied before ``add``: e.g. Okta's ``replace members []``

    def is_empty(self) -> bool:
        return not self.add and not self.remove and not self.remove_all


@dataclass(frozen=True)
class Change:
    """What an ``update`` callback returns: the new document and, for groups, the membership delta."""

    doc: dict[str, Any]
    members: MemberDelta = field(default_factory=MemberDelta)
