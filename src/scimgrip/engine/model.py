"""The provisioning engine's shared vocabulary: source objects, assignments, sources, mapped results.

The engine (provisioning-engine.md) pushes a source directory to any SCIM endpoint the way Entra does.
Every source connector returns objects in **Entra's attribute vocabulary** (``userPrincipalName``,
``mailNickname``, ``objectId``, ``givenName``, ``surname``, ``mail``, ``otherMails``, ``telephoneNumber``,
``mobile``, ``streetAddress``, ``city``, ``state``, ``postalCode``, ``country``, ``employeeId``,
``jobTitle``, ``department``, ``displayName``, ``manager`` (the manager's objectId), ``accountEnabled``,
``IsSoftDeleted``; groups: ``displayName``, ``mailNickname``, ``description``, ``objectId``), so that one set
of mappings and scoping filters works whatever the source is.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ObjectType = Literal["User", "Group"]


@dataclass(frozen=True)
class SourceObject:
    """One user or group read from a source.

    ``id`` is the immutable source anchor (Entra ``objectId``). ``attributes`` uses Entra's names (see the
    module docstring); ``objectId`` is also present in ``attributes``. For groups ``members`` holds the
    objectIds of the *direct* members (users and groups). ``deleted`` marks a hard delete reported by an
    incremental read (a tombstone: only ``id`` and ``object_type`` are meaningful).
    """

    object_type: ObjectType
    id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    members: tuple[str, ...] | None = None
    deleted: bool = False


@dataclass(frozen=True)
class Assignments:
    """Who is assigned to the application (scope mode ``assigned``; SCP-1).

    Users assigned directly, and groups assigned (their direct members are in scope; nested groups are not
    expanded unless the job asks for ``nested: flatten``).
    """

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ChangeSet:
    """What an incremental read returns: changed/added/deleted objects since a watermark, and the new one."""

    objects: list[SourceObject]
    watermark: str
    assignments: Assignments | None = None   # current assignments when the source can tell cheaply
    complete: bool = False   # True: ``objects`` is the whole directory (e.g. a file source); anything the
    #                          engine has linked that is absent was hard-deleted in the source


class Source(abc.ABC):
    """A directory the engine reads. Implementations: file (JSON/CSV), Microsoft Graph, LDAP/AD."""

    kind: str = "abstract"

    @abc.abstractmethod
    def read_all(self) -> Iterator[SourceObject]:
        """Every user and group (initial cycle, CYC-1). Users before groups."""

    @abc.abstractmethod
    def assignments(self) -> Assignments:
        """The application's assignments (users and groups assigned to the app)."""

    @abc.abstractmethod
    def watermark(self) -> str:
        """An opaque marker of "now" in the source, taken *before* a full read so nothing is missed."""

    @abc.abstractmethod
    def read_changes(self, watermark: str) -> ChangeSet:
        """Objects changed, added or hard-deleted since ``watermark`` (CYC-2), and the new watermark.

        Sources that cannot do better may return everything (the engine then diffs against what it last
        exported, so only real changes reach the target).
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
