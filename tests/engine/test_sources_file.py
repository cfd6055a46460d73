"""FileSource: the shipped sample, the JSON and CSV formats, watermarks, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scimgrip.engine.model import Assignments, Source, SourceObject
from scimgrip.engine.sources import open_source
from scimgrip.engine.sources.file import FileSource, FileSourceError
from scimgrip.engine.sources.graph import GraphSource

SAMPLE = Path(__file__).parents[2] / "src" / "scimgrip" / "engine" / "sources" / "sample" / "directory.json"


@pytest.fixture(scope="module")
def sample() -> list[SourceObject]:
    return list(FileSource(SAMPLE).read_all())


def _users(objects: list[SourceObject]) -> dict[str, SourceObject]:
    return {o.id: o for o in objects if o.object_type == "User"}


def _groups(objects: list[SourceObject]) -> dict[str, SourceObject]:
    return {o.id: o for o in objects if o.object_type == "Group"}


# -- the shipped sample --------------------------------------------------------------------------------------


def test_sample_shape(sample: list[SourceObject]) -> None:
    users, groups = _users(sample), _groups(sample)
    assert len(users) == 300 and len(groups) == 20
    kinds = [o.object_type for o in sample]
    assert kinds == sorted(kinds, key=lambda k: k != "User"), "users before groups"
    for obj in sample:
        assert obj.attributes["objectId"] == obj.id and not obj.deleted
    first = next(iter(users.values())).attributes
    for name in ("userPrincipalName", "mailNickname", "givenName", "surname", "displayName", "mail", "jobTitle",
                 "department", "employeeId", "telephoneNumber", "streetAddress", "city", "state", "postalCode",
                 "country", "accountEnabled"):
        assert name in first, name
    assert any(not u.attributes["displayName"].isascii() for u in users.values()), "diacritics"
    assert all(u.attributes["userPrincipalName"].isascii() for u in users.values())
    assert len({u.attributes["userPrincipalName"] for u in users.values()}) == 300
    assert any(isinstance(u.attributes.get("otherMails"), list) for u in users.values())
    assert any("mobile" in u.attributes for u in users.values())
    assert len({u.attributes["department"] for u in users.values()}) >= 8


def test_sample_manager_tree(sample: list[SourceObject]) -> None:
    users = _users(sample)
    roots = [u for u in users.values() if "manager" not in u.attributes]
    assert len(roots) == 1
    for user in users.values():   # every chain ends at the root, without cycles
        seen = {user.id}
        current = user
        while "manager" in current.attributes:
            current = users[current.attributes["manager"]]
            assert current.id not in seen
            seen.add(current.id)
        assert current is roots[0]
    managers = {u.attributes.get("manager") for u in users.values()}
    flagged = [u for u in users.values() if u.attributes.get("softDeleted") or not u.attributes["accountEnabled"]]
    assert not managers & {u.id for u in flagged}, "disabled and soft-deleted users are leaves"


def test_sample_disabled_soft_deleted_and_groups(sample: list[SourceObject]) -> None:
    users, groups = _users(sample), _groups(sample)
    disabled = [u for u in users.values() if u.attributes["accountEnabled"] is False]
    soft = [u for u in users.values() if u.attributes.get("softDeleted")]
    assert 3 <= len(disabled) <= 15 and 2 <= len(soft) <= 10
    assert all(u.attributes["deletedDateTime"].endswith("Z") for u in soft)
    assert all("IsSoftDeleted" not in u.attributes for u in users.values()), "the engine computes it (SCP-4)"
    nested = [g for g in groups.values() if any(m in groups for m in g.members or ())]
    assert nested, "a nested group"
    for group in groups.values():
        assert group.members is not None and set(group.members) <= set(users) | set(groups)
        assert group.attributes["displayName"] and group.attributes["mailNickname"]
    assigned = FileSource(SAMPLE).assignments()
    assert assigned.users and assigned.groups
    assert assigned.users <= set(users) and assigned.groups <= set(groups)
    assert {g.id for g in nested} <= assigned.groups


def test_read_changes_is_complete_and_watermark_tracks_content(tmp_path: Path) -> None:
    path = tmp_path / "dir.json"
    path.write_bytes(SAMPLE.read_bytes())
    source = FileSource(path)
    mark = source.watermark()
    assert mark.startswith("sha256:") and mark == source.watermark()
    changes = source.read_changes("")
    assert changes.complete and changes.watermark == mark
    assert len(changes.objects) == 320 and changes.assignments == source.assignments()
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["users"][0]["jobTitle"] = "Chief Everything Officer"
    path.write_text(json.dumps(doc), encoding="utf-8")
    after = source.read_changes(mark)
    assert after.watermark != mark and after.watermark.split(":")[1] != mark.split(":")[1]
    assert next(iter(after.objects)).attributes["jobTitle"] == "Chief Everything Officer"


# -- JSON details and errors ---------------------------------------------------------------------------------


def _json(tmp_path: Path, doc: object) -> FileSource:
    path = tmp_path / "d.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=1), encoding="utf-8")
    return FileSource(path)


def test_json_minimal_and_passthrough(tmp_path: Path) -> None:
    source = _json(tmp_path, {"users": [{"objectId": "u1", "extension_abc_costCenter": "42", "mail": "",
                                         "manager": None}],
                              "groups": [{"objectId": "g1", "displayName": "G"}]})
    user, group = list(source.read_all())
    assert user.attributes == {"objectId": "u1", "extension_abc_costCenter": "42"}
    assert group.members == () and source.assignments() == Assignments()


@pytest.mark.parametrize(("doc", "message"), [
    ('{"users": [\n  {"objectId": "u1",}\n]}', r"d\.json:2:\d+: invalid JSON"),
    ("[]", "expected a JSON object"),
    ({"users": {"objectId": "u1"}}, "'users' must be a list"),
    ({"users": [{"objectId": "u1"}, {"displayName": "x"}]}, r"users\[1\]: objectId is required"),
    ({"users": [{"objectId": "u1", "accountEnabled": "yes"}]}, r"users\[0\]: accountEnabled must be true or false"),
    ({"users": [{"objectId": "u1"}, {"objectId": "u1"}]}, "duplicate objectId 'u1'"),
    ({"users": [{"objectId": "u1", "manager": {"id": "u2"}}]}, "manager must be the manager's objectId"),
    ({"groups": [{"objectId": "g1", "members": "u1"}]}, r"groups\[0\]: members must be a list"),
    ({"users": [{"objectId": "u1", "members": ["u2"]}]}, "only groups have members"),
    ({"assignments": {"users": [1]}}, "assignments.users: expected a list of objectIds"),
    ({"users": ["u1"]}, r"users\[0\]: expected an object"),
])
def test_json_errors(tmp_path: Path, doc: object, message: str) -> None:
    with pytest.raises(FileSourceError, match=message) as info:
        list(_json(tmp_path, doc).read_all())
    assert "d.json" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileSourceError, match="no such file"):
        list(FileSource(tmp_path / "nope.json").read_all())


def test_cache_follows_the_file(tmp_path: Path) -> None:
    source = _json(tmp_path, {"users": [{"objectId": "u1"}]})
    assert source.load() is source.load()
    _json(tmp_path, {"users": [{"objectId": "u1"}, {"objectId": "u2"}]})
    assert [o.id for o in source.read_all()] == ["u1", "u2"]


# -- CSV -----------------------------------------------------------------------------------------------------

USERS_CSV = """objectId,userPrincipalName,displayName,accountEnabled,otherMails,manager,softDeleted,deletedDateTime
u1,zoe@contoso.example,Zoë Åberg,true,zoe@private.example;zoe@alt.example,,,
u2,jose@contoso.example,José Núñez,FALSE,,u1,,
u3,ana@contoso.example,Anaïs Dupré,yes,,u1,true,2024-05-01T10:00:00Z
"""
GROUPS_CSV = """objectId,displayName,mailNickname,description,members
g1,Sales,sales,,u1;u2
g2,Everyone,everyone,Parent,g1; u3
g3,Empty,empty,,
"""
ASSIGNMENTS_CSV = "principalType,principalId\nUser,u1\ngroup,g2\n"


def _check_csv_directory(source: FileSource) -> None:
    objects = list(source.read_all())
    users, groups = _users(objects), _groups(objects)
    assert users["u1"].attributes == {"objectId": "u1", "userPrincipalName": "zoe@contoso.example",
                                      "displayName": "Zoë Åberg", "accountEnabled": True,
                                      "otherMails": ["zoe@private.example", "zoe@alt.example"]}
    assert users["u2"].attributes["accountEnabled"] is False and users["u2"].attributes["manager"] == "u1"
    assert users["u3"].attributes["softDeleted"] is True
    assert users["u3"].attributes["deletedDateTime"] == "2024-05-01T10:00:00Z"
    assert groups["g1"].members == ("u1", "u2") and groups["g2"].members == ("g1", "u3")
    assert groups["g3"].members == () and "description" not in groups["g1"].attributes
    assert groups["g2"].attributes["description"] == "Parent"


def test_csv_files(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(USERS_CSV, encoding="utf-8")
    (tmp_path / "teams.csv").write_text(GROUPS_CSV, encoding="utf-8")
    (tmp_path / "assigned.csv").write_text(ASSIGNMENTS_CSV, encoding="utf-8")
    source = FileSource(tmp_path / "people.csv", groups=tmp_path / "teams.csv",
                        assignments=tmp_path / "assigned.csv")
    _check_csv_directory(source)
    assert source.assignments() == Assignments(users=frozenset({"u1"}), groups=frozenset({"g2"}))
    users_only = FileSource(tmp_path / "people.csv")
    assert [o.object_type for o in users_only.read_all()] == ["User"] * 3


def test_csv_directory_and_watermark(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_text("\ufeff" + USERS_CSV, encoding="utf-8")   # Excel's BOM
    (tmp_path / "groups.csv").write_text(GROUPS_CSV, encoding="utf-8")
    source = FileSource(tmp_path)
    _check_csv_directory(source)
    assert source.assignments() == Assignments()
    mark = source.watermark()
    (tmp_path / "assignments.csv").write_text(ASSIGNMENTS_CSV, encoding="utf-8")
    changes = source.read_changes(mark)
    assert changes.watermark != mark and changes.complete
    assert changes.assignments == Assignments(users=frozenset({"u1"}), groups=frozenset({"g2"}))


@pytest.mark.parametrize(("name", "text", "message"), [
    ("users.csv", "objectId,accountEnabled\nu1,true\nu2,maybe\n", r"users\.csv: line 3: accountEnabled must be"),
    ("users.csv", "displayName\nx\n", r"users\.csv:1: header has no objectId column"),
    ("users.csv", "", "empty file"),
    ("users.csv", "objectId,mail\nu1,a@b\nu2,a@b,extra\n", "line 3: more cells than header columns"),
    ("users.csv", "objectId,mail,city\nu1,a@b,x\nu2,a@b\n", r"users\.csv:3: fewer cells than header"),
    ("users.csv", "objectId,mail\nu1,a\n,b\n", "line 3: objectId is required"),
    ("users.csv", "objectId\nu1\nu1\n", "duplicate objectId 'u1'"),
    ("users.csv", 'objectId,mail\nu1,"unterminated\n', "invalid CSV"),
    ("groups.csv", "objectId,members\ng1,u1\ng2\n", r"groups\.csv:3: fewer cells"),
    ("assignments.csv", "principalType,principalId\nUser,u1\nDevice,d1\n", r"assignments\.csv:3: principalType"),
    ("assignments.csv", "type,id\n", r"assignments\.csv:1: header must have"),
])
def test_csv_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / "users.csv").write_text("objectId\nu1\n", encoding="utf-8")
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(FileSourceError, match=message):
        list(FileSource(tmp_path).read_all())


def test_csv_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "users.csv").write_bytes("objectId,displayName\nu1,Zoë\n".encode("latin-1"))
    with pytest.raises(FileSourceError, match="not UTF-8"):
        list(FileSource(tmp_path).read_all())


def test_directory_without_users_csv(tmp_path: Path) -> None:
    with pytest.raises(FileSourceError, match="no users.csv"):
        FileSource(tmp_path).watermark()


# -- the factory ---------------------------------------------------------------------------------------------


def test_open_source() -> None:
    source = open_source({"kind": "file", "path": str(SAMPLE)})
    assert isinstance(source, FileSource) and isinstance(source, Source) and source.kind == "file"
    graph = open_source({"kind": "graph", "tenant_id": "t", "client_id": "c", "client_secret": "s",
                         "service_principal_id": "sp"})
    assert isinstance(graph, GraphSource) and graph.kind == "graph"
    graph.close()
    with pytest.raises(ValueError, match="unknown source kind 'csv'"):
        open_source({"kind": "csv", "path": "x"})
    with pytest.raises(ValueError, match="'path' is required"):
        open_source({"kind": "file"})
    with pytest.raises(ValueError, match="file source: .*unexpected keyword"):
        open_source({"kind": "file", "path": "x", "colour": "blue"})
    with pytest.raises(ValueError, match="ldap source: .*missing"):   # imported lazily, arguments checked
        open_source({"kind": "ldap"})
    with pytest.raises(ValueError, match="graph source: .*missing"):
        open_source({"kind": "graph", "tenant_id": "t"})
