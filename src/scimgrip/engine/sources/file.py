"""A directory kept in a file: JSON or CSV, in Entra's attribute vocabulary.

The file source exists so the engine can be run and tested without a tenant (and so an HR export can be a
source). It cannot tell what changed, so ``read_changes`` returns the whole directory with
``ChangeSet(complete=True)`` and the engine diffs against what it last exported.

**JSON** (one document; ``sample/directory.json`` is an example)::

    {"users":  [{"objectId": "…", "userPrincipalName": "…", "accountEnabled": true, "manager": "<objectId>",
                 "otherMails": ["…"], …}],
     "groups": [{"objectId": "…", "displayName": "…", "members": ["<user or group objectId>", …]}],
     "assignments": {"users": ["<objectId>", …], "groups": ["<objectId>", …]}}

**CSV** (UTF-8, a header row of attribute names; an empty cell means "no value"): either a users CSV file
(``FileSource("users.csv", groups="groups.csv", assignments="assignments.csv")``) or a directory holding
``users.csv`` and optionally ``groups.csv`` and ``assignments.csv``. Multi-valued cells (``otherMails``, a
group's ``members``) are ``;``-separated; booleans are ``true``/``false`` (also ``1``/``0``, ``yes``/``no``).
``assignments.csv`` has the columns ``principalType`` (``User`` or ``Group``) and ``principalId``.

Every attribute is passed through under its own name (extension attributes included); ``objectId`` is
required and unique per object type. **Soft delete**: a user with ``softDeleted: true`` (and optionally
``deletedDateTime``, ISO 8601) is reported with both attributes, as Graph's deleted items are; deriving
``IsSoftDeleted`` from it (SCP-4) is the engine's job. Malformed input raises ``FileSourceError`` naming the
file and the line (JSON, CSV) or the object (``users[12]``).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from scimgrip.engine.model import Assignments, ChangeSet, ObjectType, Source, SourceObject

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
BOOLEAN_ATTRIBUTES = frozenset({"accountEnabled", "softDeleted"})
MULTI_VALUED_ATTRIBUTES = frozenset({"otherMails", "proxyAddresses", "businessPhones"})


class FileSourceError(ValueError):
    """Malformed directory file; the message names the file and the line, row or object."""


@dataclass(frozen=True)
class Directory:
    """A parsed directory file."""

    users: list[SourceObject]
    groups: list[SourceObject]
    assignments: Assignments


class FileSource(Source):
    """A JSON or CSV directory file (see the module docstring for the formats)."""

    kind = "file"

    def __init__(self, path: str | os.PathLike[str], *, groups: str | os.PathLike[str] | None = None,
                 assignments: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self._groups_path = Path(groups) if groups is not None else None
        self._assignments_path = Path(assignments) if assignments is not None else None
        self._cache: tuple[str, Directory] | None = None

    # -- files -------------------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The files this source reads (that exist), in a stable order."""
        if self.path.is_dir():
            names = [self.path / "users.csv", self.path / "groups.csv", self.path / "assignments.csv"]
            if not names[0].is_file():
                raise FileSourceError(f"{self.path}: directory has no users.csv")
            return [p for p in names if p.is_file()]
        if not self.path.is_file():
            raise FileSourceError(f"{self.path}: no such file")
        extra = [p for p in (self._groups_path, self._assignments_path) if p is not None]
        for p in extra:
            if not p.is_file():
                raise FileSourceError(f"{p}: no such file")
        return [self.path, *extra]

    def _is_json(self) -> bool:
        return not self.path.is_dir() and self.path.suffix.lower() != ".csv"

    def watermark(self) -> str:
        """``sha256:<hex of the contents>:<newest mtime in ns>``."""
        digest = hashlib.sha256()
        mtime = 0
        for p in self.files():
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\0")
            mtime = max(mtime, p.stat().st_mtime_ns)
        return f"sha256:{digest.hexdigest()}:{mtime}"

    def _stamp(self) -> str:
        return "|".join(f"{p}:{st.st_size}:{st.st_mtime_ns}" for p in self.files() for st in [p.stat()])

    def load(self) -> Directory:
        """Parse the file(s); cached while their size and mtime do not change."""
        stamp = self._stamp()
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        directory = self._load_json(self.path) if self._is_json() else self._load_csv()
        self._cache = (stamp, directory)
        return directory

    # -- Source ------------------------------------------------------------------------------------------

    def read_all(self) -> Iterator[SourceObject]:
        directory = self.load()
        yield from directory.users
        yield from directory.groups

    def assignments(self) -> Assignments:
        return self.load().assignments

    def read_changes(self, watermark: str) -> ChangeSet:
        new_mark = self.watermark()
        directory = self.load()
        return ChangeSet(objects=[*directory.users, *directory.groups], watermark=new_mark,
                         assignments=directory.assignments, complete=True)

    # -- JSON --------------------------------------------------------------------------------------------

    def _load_json(self, path: Path) -> Directory:
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise FileSourceError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
        if not isinstance(doc, dict):
            raise FileSourceError(f"{path}: expected a JSON object with 'users', 'groups', 'assignments'")
        users = [_object(path, "User", f"users[{i}]", item, json=True)
                 for i, item in enumerate(_list(path, doc, "users"))]
        groups = [_object(path, "Group", f"groups[{i}]", item, json=True)
                  for i, item in enumerate(_list(path, doc, "groups"))]
        _check_unique(path, users, "users")
        _check_unique(path, groups, "groups")
        raw = doc.get("assignments") or {}
        if not isinstance(raw, dict):
            raise FileSourceError(f"{path}: assignments: expected an object with 'users' and 'groups'")
        assigned = Assignments(users=frozenset(_id_list(path, "assignments.users", raw.get("users"))),
                               groups=frozenset(_id_list(path, "assignments.groups", raw.get("groups"))))
        return Directory(users, groups, assigned)

    # -- CSV ---------------------------------------------------------------------------------------------

    def _load_csv(self) -> Directory:
        if self.path.is_dir():
            users_path = self.path / "users.csv"
            groups_path: Path | None = self.path / "groups.csv"
            assignments_path: Path | None = self.path / "assignments.csv"
        else:
            users_path, groups_path, assignments_path = self.path, self._groups_path, self._assignments_path
        users = [_object(users_path, "User", f"line {line}", row, json=False)
                 for line, row in _csv_rows(users_path)]
        _check_unique(users_path, users, "users")
        groups: list[SourceObject] = []
        if groups_path is not None and groups_path.is_file():
            groups = [_object(groups_path, "Group", f"line {line}", row, json=False)
                      for line, row in _csv_rows(groups_path)]
            _check_unique(groups_path, groups, "groups")
        assigned = Assignments()
        if assignments_path is not None and assignments_path.is_file():
            assigned = _csv_assignments(assignments_path)
        return Directory(users, groups, assigned)


def _list(path: Path, doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise FileSourceError(f"{path}: '{key}' must be a list")
    return value


def _id_list(path: Path, where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FileSourceError(f"{path}: {where}: expected a list of objectIds (strings)")
    return value


def _check_unique(path: Path, objects: list[SourceObject], what: str) -> None:
    seen: set[str] = set()
    for obj in objects:
        if obj.id in seen:
            raise FileSourceError(f"{path}: {what}: duplicate objectId {obj.id!r}")
        seen.add(obj.id)


def _parse_bool(text: str) -> bool | None:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return None


def _object(path: Path, object_type: ObjectType, where: str, item: Any, *, json: bool) -> SourceObject:
    """Validate one user or group (a JSON object or a CSV row) and build its SourceObject."""
    if not isinstance(item, dict):
        raise FileSourceError(f"{path}: {where}: expected an object")
    if None in item:   # a CSV row with more cells than the header
        raise FileSourceError(f"{path}: {where}: more cells than header columns")
    values = item.values()
    if None in values or "" in values:
        attributes = {k: v for k, v in item.items() if v is not None and v != ""}
    else:
        attributes = item   # freshly parsed and ours: no copy (100k users are read in ~2 s)
    if json:
        for key in BOOLEAN_ATTRIBUTES & attributes.keys():
            if not isinstance(attributes[key], bool):
                raise FileSourceError(f"{path}: {where}: {key} must be true or false, not {attributes[key]!r}")
    else:
        for key in list(attributes):
            value = _csv_value(path, where, key, attributes[key])
            if value is None:
                del attributes[key]
            else:
                attributes[key] = value
    members: tuple[str, ...] | None = None
    if "members" in attributes:
        value = attributes.pop("members")
        if object_type != "Group":
            raise FileSourceError(f"{path}: {where}: only groups have members")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise FileSourceError(f"{path}: {where}: members must be a list of objectIds")
        members = tuple(value)
    elif object_type == "Group":
        members = ()
    if "manager" in attributes and not isinstance(attributes["manager"], str):
        raise FileSourceError(f"{path}: {where}: manager must be the manager's objectId (a string)")
    object_id = attributes.get("objectId")
    if not isinstance(object_id, str) or not object_id.strip():
        raise FileSourceError(f"{path}: {where}: objectId is required (a non-empty string)")
    return SourceObject(object_type=object_type, id=object_id, attributes=attributes, members=members)


def _csv_value(path: Path, where: str, key: str, text: str) -> Any:
    if key in BOOLEAN_ATTRIBUTES:
        flag = _parse_bool(text)
        if flag is None:
            raise FileSourceError(f"{path}: {where}: {key} must be true or false, not {text!r}")
        return flag
    if key in MULTI_VALUED_ATTRIBUTES or key == "members":
        values = [v.strip() for v in text.split(";") if v.strip()]
        return values if values or key == "members" else None
    return text


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, strict=True)
            if not reader.fieldnames:
                raise FileSourceError(f"{path}: empty file (a header row is required)")
            if "objectId" not in reader.fieldnames:
                raise FileSourceError(f"{path}:1: header has no objectId column")
            for row in reader:
                if all(v is None or not str(v).strip() for v in row.values()):
                    continue   # blank line
                if None in row.values():
                    raise FileSourceError(f"{path}:{reader.line_num}: fewer cells than header columns")
                yield reader.line_num, row
    except csv.Error as exc:
        raise FileSourceError(f"{path}: invalid CSV: {exc}") from None
    except UnicodeDecodeError as exc:
        raise FileSourceError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _csv_assignments(path: Path) -> Assignments:
    users: set[str] = set()
    groups: set[str] = set()
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, strict=True)
            if not reader.fieldnames or not {"principalType", "principalId"} <= set(reader.fieldnames):
                raise FileSourceError(f"{path}:1: header must have principalType and principalId columns")
            for row in reader:
                kind = (row.get("principalType") or "").strip()
                pid = (row.get("principalId") or "").strip()
                if not kind and not pid:
                    continue
                if not pid:
                    raise FileSourceError(f"{path}:{reader.line_num}: principalId is empty")
                if kind.lower() == "user":
                    users.add(pid)
                elif kind.lower() == "group":
                    groups.add(pid)
                else:
                    raise FileSourceError(f"{path}:{reader.line_num}: principalType must be User or Group, "
                                          f"not {kind!r}")
    except csv.Error as exc:
        raise FileSourceError(f"{path}: invalid CSV: {exc}") from None
    return Assignments(users=frozenset(users), groups=frozenset(groups))
