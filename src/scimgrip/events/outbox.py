"""Event construction for the transactional outbox: which events a change produces, and their payloads.

Pure (no I/O): storage calls these inside the write transaction and stores the result with the change, so
there is no change without its event and no event without its change. Types and data shapes are described in
``docs/events.md``; ``previous_attributes`` follows the WorkOS Directory Sync convention.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scimgrip.scim.model import StoredResource

EVENT_TYPES = (
    "user.created", "user.updated", "user.disabled", "user.enabled", "user.deleted",
    "group.created", "group.updated", "group.deleted", "group.member_added", "group.member_removed",
)


@dataclass(frozen=True)
class Draft:
    """An event before storage gives it an id, a sequence number and a time."""

    type: str
    resource_type: str
    resource_id: str
    data: dict[str, Any]


def _utc(value: dt.datetime) -> str:
    v = value.astimezone(dt.UTC)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond:06d}Z")


def resource_view(res: StoredResource) -> dict[str, Any]:
    """The resource as stored, in SCIM shape (RFC 7643 §3.1 ``id`` and ``meta``; no ``members``/``groups``)."""
    out: dict[str, Any] = {"id": res.id}
    out.update(res.doc)
    out["meta"] = {"resourceType": res.resource_type, "created": _utc(res.created),
                   "lastModified": _utc(res.last_modified), "version": f'W/"{res.version}"'}
    return out


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """``previous_attributes``: for each changed top-level attribute its old value (``None`` if it was absent).

    Complex attributes and extension objects (dicts on both sides) are diffed one level down, so a changed
    ``department`` in the enterprise extension reports only ``{"urn:…:User": {"department": old}}``.
    """
    prev: dict[str, Any] = {}
    for key in list(before) + [k for k in after if k not in before]:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            prev[key] = {k: old.get(k) for k in list(old) + [k for k in new if k not in old]
                         if old.get(k) != new.get(k)}
        else:
            prev[key] = old
    return prev


def _kind(resource_type: str) -> str:
    return "user" if resource_type == "User" else "group"


def created(res: StoredResource, added: Iterable[tuple[str, str]] = ()) -> list[Draft]:
    """``user.created`` / ``group.created``, then one ``group.member_added`` per initial member."""
    view = resource_view(res)
    out = [Draft(f"{_kind(res.resource_type)}.created", res.resource_type, res.id, {"resource": view})]
    out.extend(_member_events("group.member_added", res, view, added))
    return out


def updated(before_doc: Mapping[str, Any], res: StoredResource, added: Iterable[tuple[str, str]] = (),
            removed: Iterable[tuple[str, str]] = ()) -> list[Draft]:
    """Events for an update: ``*.updated`` for attribute changes, ``user.disabled``/``user.enabled`` when
    ``active`` flips (``active`` is then reported there, not in ``user.updated``), one member event per member."""
    view = resource_view(res)
    out: list[Draft] = []
    prev = diff(before_doc, res.doc)
    kind = _kind(res.resource_type)
    if kind == "user" and "active" in prev:
        old_active, new_active = prev.pop("active"), res.doc.get("active")
        if bool(old_active is not False) != bool(new_active is not False):
            etype = "user.enabled" if new_active is not False else "user.disabled"
            out.append(Draft(etype, res.resource_type, res.id,
                             {"resource": view, "previous_attributes": {"active": old_active}}))
        else:
            prev["active"] = old_active
    if prev:
        out.append(Draft(f"{kind}.updated", res.resource_type, res.id,
                         {"resource": view, "changed_attributes": list(prev), "previous_attributes": prev}))
    out.extend(_member_events("group.member_removed", res, view, removed))
    out.extend(_member_events("group.member_added", res, view, added))
    return out


def deleted(res: StoredResource) -> list[Draft]:
    """``user.deleted`` / ``group.deleted`` with the resource as it was last stored."""
    return [Draft(f"{_kind(res.resource_type)}.deleted", res.resource_type, res.id,
                  {"resource": resource_view(res)})]


def removed_from(groups: Sequence[StoredResource], member: tuple[str, str]) -> list[Draft]:
    """``group.member_removed`` for each group a deleted resource was a member of."""
    out: list[Draft] = []
    for g in groups:
        out.extend(_member_events("group.member_removed", g, resource_view(g), [member]))
    return out


def _member_events(etype: str, group: StoredResource, view: dict[str, Any],
                   members: Iterable[tuple[str, str]]) -> list[Draft]:
    return [Draft(etype, group.resource_type, group.id, {"resource": view, "member": {"value": m, "type": t}})
            for m, t in members]
