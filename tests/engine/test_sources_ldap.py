"""LdapSource against a real OpenLDAP slapd (tests/engine/ldap_server.py), plus server-less unit tests of the
AD mapping, DN handling and the watermark."""

from __future__ import annotations

import math
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest

from scimgrip.engine.model import Assignments, ChangeSet, Source, SourceObject
from scimgrip.engine.sources.ldap import (
    LdapSource,
    LdapSourceError,
    _Mark,
    ad_account_enabled,
    domain_from_dn,
    guid_from_bytes,
    normalize_dn,
)

from .ldap_server import (
    COUNTRIES,
    DEPARTMENTS,
    READER_DN,
    READER_PW,
    ROOT_DN,
    ROOT_PW,
    SUFFIX,
    Slapd,
    group_dn,
    load,
    manager_of,
    sample_entries,
    unavailable_reason,
    user_dn,
)

N_USERS = 50
N_GROUPS = 5

needs_slapd = pytest.mark.skipif(unavailable_reason() is not None, reason=f"OpenLDAP: {unavailable_reason()}")


# ------------------------------------------------------------------------------------------------- fixtures


def _start_loaded() -> tuple[Slapd, dict[str, str]]:
    server = Slapd(Path(tempfile.mkdtemp(prefix="scimgrip-slapd-"))).start()
    try:
        conn = server.admin()
        load(conn, sample_entries(N_USERS))
        conn.search(SUFFIX, "(objectClass=*)", attributes=["entryUUID"])
        uuids = {e["dn"].lower(): e["raw_attributes"]["entryUUID"][0].decode() for e in conn.response}
        conn.unbind()
    except BaseException:
        server.cleanup()
        raise
    return server, uuids


@pytest.fixture(scope="module")
def directory() -> Iterator[tuple[Slapd, dict[str, str]]]:
    """A slapd with the sample directory, shared by the read-only tests."""
    server, uuids = _start_loaded()
    yield server, uuids
    server.cleanup()


@pytest.fixture()
def fresh_directory() -> Iterator[tuple[Slapd, dict[str, str]]]:
    """A slapd of its own for a test that writes."""
    server, uuids = _start_loaded()
    yield server, uuids
    server.cleanup()


def make_source(server: Slapd, **kwargs: object) -> LdapSource:
    options: dict[str, object] = {
        "users_base": f"ou=People,{SUFFIX}",
        "groups_base": f"ou=Groups,{SUFFIX}",
    }
    options.update(kwargs)
    return LdapSource(server.url, READER_DN, READER_PW, SUFFIX, **options)  # type: ignore[arg-type]


def uid_of(n: int, uuids: dict[str, str]) -> str:
    return uuids[user_dn(n).lower()]


def gid_of(name: str, uuids: dict[str, str]) -> str:
    return uuids[group_dn(name).lower()]


# ------------------------------------------------------------------------------------------------ full read


@needs_slapd
def test_read_all_counts_order_and_ids(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = directory
    source = make_source(server)
    assert isinstance(source, Source)
    objects = list(source.read_all())
    source.close()
    kinds = [o.object_type for o in objects]
    assert kinds.count("User") == N_USERS and kinds.count("Group") == N_GROUPS
    assert kinds == ["User"] * N_USERS + ["Group"] * N_GROUPS  # users before groups
    assert {o.id for o in objects if o.object_type == "User"} == {uid_of(n, uuids) for n in range(N_USERS)}
    for obj in objects:
        assert obj.attributes["objectId"] == obj.id and not obj.deleted
        assert uuid.UUID(obj.id)


@needs_slapd
def test_user_attribute_mapping(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = directory
    source = make_source(server, account_enabled_attribute="employeeType")
    users = {o.attributes["mailNickname"]: o for o in source.read_all() if o.object_type == "User"}
    source.close()

    u = users["user013"].attributes
    assert u["objectId"] == uid_of(13, uuids)
    assert u["userPrincipalName"] == "user013@example.com"
    assert u["mail"] == "user013@example.com"
    assert u["otherMails"] == ["alt013@example.org"]     # second mail value
    assert u["givenName"] == "Given13" and u["surname"] == "Family13"
    assert u["displayName"] == "Given13 Family13 (display)"
    assert u["telephoneNumber"] == "+31 20 555 0013" and u["mobile"] == "+31 6 1234 0013"
    assert u["streetAddress"] == "Keizersgracht 14" and u["city"] == "Amsterdam" and u["state"] == "Noord-Holland"
    assert u["postalCode"] == "1013 AB" and u["country"] == COUNTRIES[13 % 5]
    assert u["employeeId"] == "E00013" and u["jobTitle"] == "Engineer 13"
    assert u["department"] == f"{DEPARTMENTS[13 % 5]} (ou)"  # 13 % 9 == 4: no departmentNumber, ou instead
    assert u["accountEnabled"] is True and u["IsSoftDeleted"] is False
    assert u["onPremisesDistinguishedName"].lower() == user_dn(13).lower()
    assert u["manager"] == uid_of(manager_of(13), uuids)

    assert "otherMails" not in users["user012"].attributes
    # no mail → UPN is uid@<domain of base_dn>
    assert "mail" not in users["user005"].attributes
    assert users["user005"].attributes["userPrincipalName"] == "user005@example.com"
    assert users["user012"].attributes["department"] == DEPARTMENTS[12 % 5]
    # account_enabled_attribute decides: employeeType=inactive for n % 17 == 16
    assert users["user016"].attributes["accountEnabled"] is False
    assert users["user033"].attributes["accountEnabled"] is False
    assert sum(1 for o in users.values() if o.attributes["accountEnabled"] is False) == 2
    # the CEO has no manager
    assert "manager" not in users["user000"].attributes


@needs_slapd
def test_department_falls_back_to_ou(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, _ = directory
    source = make_source(server)
    users = {o.attributes["mailNickname"]: o.attributes for o in source.read_all() if o.object_type == "User"}
    source.close()
    for n in range(N_USERS):
        expected = f"{DEPARTMENTS[n % 5]} (ou)" if n % 9 == 4 else DEPARTMENTS[n % 5]
        assert users[f"user{n:03d}"]["department"] == expected
    assert all(a["accountEnabled"] is True for a in users.values())  # no ppolicy lock, no enabled attribute


@needs_slapd
def test_manager_object_ids(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = directory
    source = make_source(server)
    users = {o.id: o for o in source.read_all() if o.object_type == "User"}
    source.close()
    for n in range(1, N_USERS):
        assert users[uid_of(n, uuids)].attributes["manager"] == uid_of(manager_of(n), uuids)
        assert users[uid_of(n, uuids)].attributes["manager"] in users


@needs_slapd
def test_group_mapping_and_members(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = directory
    source = make_source(server)
    groups = {o.attributes["displayName"]: o for o in source.read_all() if o.object_type == "Group"}
    source.close()
    assert set(groups) == {"app-users", "engineering", "sales", "everyone-nested", "auditors"}
    app = groups["app-users"]
    assert app.id == gid_of("app-users", uuids)
    assert app.attributes == {
        "objectId": app.id,
        "displayName": "app-users",
        "mailNickname": "app-users",
        "description": "The app-users group",
        "onPremisesDistinguishedName": group_dn("app-users"),
    }
    assert app.members is not None
    assert set(app.members) == {uid_of(n, uuids) for n in range(0, N_USERS, 3)}
    assert len(app.members) == len(range(0, N_USERS, 3))
    nested = groups["everyone-nested"].members
    assert nested is not None
    assert set(nested) == {gid_of("engineering", uuids), gid_of("sales", uuids), uid_of(1, uuids)}
    # groupOfUniqueNames: the optional #'…'B UID is stripped, members not in the directory are dropped
    assert groups["auditors"].members == (uid_of(2, uuids), uid_of(7, uuids))


@needs_slapd
def test_paged_search_smaller_pages_same_result(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, _ = directory
    big = make_source(server)
    small = make_source(server, page_size=7)
    expected = list(big.read_all())
    before = small.pages_fetched
    got = list(small.read_all())
    # the ID scan and the full read each page users (50 → 8 pages) and groups (5 → 1 page)
    assert small.pages_fetched - before >= 2 * (math.ceil(N_USERS / 7) + 1)
    assert got == expected
    big.close()
    small.close()


@needs_slapd
def test_server_size_limit_needs_paging(directory: tuple[Slapd, dict[str, str]]) -> None:
    """The reader account has a server size limit of 20: a plain search of the 50 users fails, the source's
    paged search reads them all; a page size above the limit is refused by slapd (adminLimitExceeded) and the
    source halves it until accepted."""
    server, _ = directory
    conn = ldap3.Connection(ldap3.Server(server.url, get_info=ldap3.NONE), READER_DN, READER_PW, auto_bind=True)
    conn.search(f"ou=People,{SUFFIX}", "(objectClass=inetOrgPerson)", attributes=["uid"])
    assert conn.result["description"] == "sizeLimitExceeded" and len(conn.response) == 20
    conn.unbind()
    source = make_source(server, page_size=20)
    assert sum(1 for o in source.read_all() if o.object_type == "User") == N_USERS
    source.close()
    too_big = make_source(server, page_size=500)
    assert sum(1 for o in too_big.read_all() if o.object_type == "User") == N_USERS
    assert too_big.effective_page_size == 15  # 500 → 250 → 125 → 62 → 31 → 15
    too_big.close()


@needs_slapd
def test_scoping_by_base_and_filter(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = directory
    source = make_source(server, users_base=f"ou=Engineering,ou=People,{SUFFIX}", group_filter="(cn=app-users)",
                         user_filter="(&(objectClass=inetOrgPerson)(!(uid=user010)))")
    objects = list(source.read_all())
    source.close()
    users = {o.id: o for o in objects if o.object_type == "User"}
    engineering = {n for n in range(0, N_USERS, 5) if n != 10}
    assert set(users) == {uid_of(n, uuids) for n in engineering}
    # a manager outside users_base is still resolved to its objectId (a lookup by DN)
    assert users[uid_of(5, uuids)].attributes["manager"] == uid_of(0, uuids)
    groups = [o for o in objects if o.object_type == "Group"]
    assert [g.attributes["displayName"] for g in groups] == ["app-users"]
    # only in-scope members are reported
    assert groups[0].members is not None
    assert set(groups[0].members) == {uid_of(n, uuids) for n in engineering if n % 3 == 0}


# ------------------------------------------------------------------------------------------------ assignments


@needs_slapd
def test_assignments_via_group(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = directory
    source = make_source(server, assignment_group_dns=[group_dn("app-users").upper()])
    assert source.assignments() == Assignments(users=frozenset(), groups=frozenset({gid_of("app-users", uuids)}))
    source.close()


@needs_slapd
def test_assignment_group_outside_group_scope_assigns_its_members(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = directory
    source = make_source(server, group_filter="(cn=sales)",
                         assignment_group_dns=[group_dn("app-users"), group_dn("sales"), f"cn=nope,{SUFFIX}"])
    result = source.assignments()
    source.close()
    assert result.groups == frozenset({gid_of("sales", uuids)})
    assert result.users == frozenset(uid_of(n, uuids) for n in range(0, N_USERS, 3))


@needs_slapd
def test_no_assignment_groups_assigns_everyone(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = directory
    source = make_source(server)
    result = source.assignments()
    source.close()
    assert result.users == frozenset(uid_of(n, uuids) for n in range(N_USERS))
    assert len(result.groups) == N_GROUPS


# ------------------------------------------------------------------------------------------------ increments


def _modify(server: Slapd, dn: str, **changes: str | list[str]) -> None:
    conn = server.admin()
    conn.modify(dn, {name: [(ldap3.MODIFY_REPLACE, value if isinstance(value, list) else [value])]
                     for name, value in changes.items()})
    conn.unbind()


@needs_slapd
def test_increments_modify_add_delete(fresh_directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = fresh_directory
    source = make_source(server, page_size=9, assignment_group_dns=[group_dn("app-users")])
    w0 = source.watermark()
    # nothing changed yet (the watermark was taken in the same second as the load: entryCSN keeps it exact)
    empty = source.read_changes(w0)
    assert empty.objects == [] and not empty.complete

    _modify(server, user_dn(11), title="Principal Engineer")
    _modify(server, user_dn(22), mobile="+31 6 0000 0000", manager=user_dn(0))
    changes = source.read_changes(w0)
    assert isinstance(changes, ChangeSet)
    assert sorted(o.id for o in changes.objects) == sorted([uid_of(11, uuids), uid_of(22, uuids)])
    by_id = {o.id: o for o in changes.objects}
    assert by_id[uid_of(11, uuids)].attributes["jobTitle"] == "Principal Engineer"
    assert by_id[uid_of(22, uuids)].attributes["mobile"] == "+31 6 0000 0000"
    assert by_id[uid_of(22, uuids)].attributes["manager"] == uid_of(0, uuids)
    assert changes.watermark != w0
    assert changes.assignments == Assignments(groups=frozenset({gid_of("app-users", uuids)}))
    w1 = changes.watermark
    assert source.read_changes(w1).objects == []

    # add one user (and put them in a group), delete another
    conn = server.admin()
    new_dn = f"uid=newbie,ou=Sales,ou=People,{SUFFIX}"
    conn.add(new_dn, ["inetOrgPerson"], {"uid": "newbie", "cn": "New Bie", "sn": "Bie", "mail": "newbie@example.com",
                                         "manager": user_dn(1)})
    conn.modify(group_dn("sales"), {"member": [(ldap3.MODIFY_ADD, [new_dn])]})
    conn.delete(user_dn(44))
    conn.search(new_dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["entryUUID"])
    new_id = conn.response[0]["raw_attributes"]["entryUUID"][0].decode()
    conn.unbind()

    # a source built later (a new process) continues from the persisted watermark string
    later = make_source(server, assignment_group_dns=[group_dn("app-users")])
    changes = later.read_changes(w1)
    by_id = {o.id: o for o in changes.objects}
    assert set(by_id) == {new_id, gid_of("sales", uuids), uid_of(44, uuids)}
    newbie = by_id[new_id]
    assert newbie.object_type == "User" and not newbie.deleted
    assert newbie.attributes["userPrincipalName"] == "newbie@example.com"
    assert newbie.attributes["manager"] == uid_of(1, uuids)
    sales = by_id[gid_of("sales", uuids)]
    assert sales.members is not None and new_id in sales.members
    tombstone = by_id[uid_of(44, uuids)]
    assert tombstone == SourceObject(object_type="User", id=uid_of(44, uuids), deleted=True)
    # changed objects come first, tombstones last
    assert changes.objects[-1].deleted

    w2 = changes.watermark
    assert later.read_changes(w2).objects == []
    # deleting a group is reported as a Group tombstone
    conn = server.admin()
    conn.delete(group_dn("auditors"))
    conn.unbind()
    stones = later.read_changes(w2).objects
    assert stones == [SourceObject(object_type="Group", id=gid_of("auditors", uuids), deleted=True)]
    source.close()
    later.close()


@needs_slapd
def test_increments_across_seconds(fresh_directory: tuple[Slapd, dict[str, str]]) -> None:
    """modifyTimestamp has one-second resolution: changes in later seconds are found by the server filter."""
    server, uuids = fresh_directory
    source = make_source(server)
    w0 = source.watermark()
    time.sleep(1.1)
    _modify(server, user_dn(3), title="Later")
    changes = source.read_changes(w0)
    assert [o.id for o in changes.objects] == [uid_of(3, uuids)]
    source.close()


@needs_slapd
def test_moving_out_of_scope_is_a_delete_and_track_deletes_off(fresh_directory: tuple[Slapd, dict[str, str]]) -> None:
    server, uuids = fresh_directory
    tracking = make_source(server, users_base=f"ou=Finance,ou=People,{SUFFIX}")
    untracked = make_source(server, users_base=f"ou=Finance,ou=People,{SUFFIX}", track_deletes=False)
    w_tracking, w_untracked = tracking.watermark(), untracked.watermark()
    assert len(w_untracked) < 200 < len(w_tracking)
    conn = server.admin()
    conn.modify_dn(user_dn(2), "uid=user002", new_superior=f"ou=Legal,ou=People,{SUFFIX}")
    conn.unbind()
    assert tracking.read_changes(w_tracking).objects == [SourceObject("User", uid_of(2, uuids), deleted=True)]
    assert untracked.read_changes(w_untracked).objects == []
    tracking.close()
    untracked.close()


@needs_slapd
def test_errors(directory: tuple[Slapd, dict[str, str]]) -> None:
    server, _ = directory
    bad = LdapSource(server.url, READER_DN, "wrong-password-xyz", SUFFIX)
    with pytest.raises(LdapSourceError) as info:
        list(bad.read_all())
    assert "wrong-password-xyz" not in str(info.value) and "invalidCredentials" in str(info.value)
    root = LdapSource(server.url, ROOT_DN, ROOT_PW, SUFFIX, users_base=f"ou=Nowhere,{SUFFIX}")
    assert [o.object_type for o in root.read_all()] == ["Group"] * N_GROUPS  # missing users_base: no users
    with pytest.raises(ValueError):
        root.read_changes("not-a-watermark")
    root.close()
    ad_mark = _Mark(flavor="ad", usn=5).encode()
    with pytest.raises(ValueError, match="flavor"):
        make_source(server).read_changes(ad_mark)


# ------------------------------------------------------------------------------------------------ no server


def test_helpers() -> None:
    guid = uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")
    assert guid_from_bytes(guid.bytes_le) == "01234567-89ab-cdef-0123-456789abcdef"
    assert ad_account_enabled("512") is True and ad_account_enabled(514) is False and ad_account_enabled(None)
    assert ad_account_enabled("66050") is False and ad_account_enabled("66048") is True
    assert normalize_dn("CN=Ann\\, B , OU=People,DC=Example, dc=com") == "cn=ann\\, b,ou=people,dc=example,dc=com"
    assert domain_from_dn("ou=x,DC=corp, dc=example,dc=com") == "corp.example.com"
    assert domain_from_dn("o=acme") == ""


def test_watermark_roundtrip() -> None:
    ids = {str(uuid.uuid4()) for _ in range(100)}
    mark = _Mark(flavor="openldap", timestamp="20260101000000Z", csn="20260101000000.000001Z#000000#000#000000",
                 users=ids, groups={"not-a-uuid"})
    text = mark.encode()
    assert text.startswith("ldap1.") and text.isascii()
    assert _Mark.decode(text) == mark
    assert _Mark.decode(_Mark(flavor="ad", usn=12345).encode()) == _Mark(flavor="ad", usn=12345)


def test_ad_mapping_without_a_server() -> None:
    source = LdapSource("ldap://dc1.corp.example.com", "CN=svc,DC=corp,DC=example,DC=com", "pw",
                        "DC=corp,DC=example,DC=com", flavor="ad", account_enabled_attribute=None)
    guid = uuid.uuid4()
    manager = str(uuid.uuid4())
    entry = {
        "dn": "CN=Ann Example,OU=Staff,DC=corp,DC=example,DC=com",
        "raw": {
            "objectGUID": [guid.bytes_le],
            "userPrincipalName": [b"ann@corp.example.com"],
            "sAMAccountName": [b"ann"],
            "givenName": [b"Ann"],
            "sn": [b"Example"],
            "displayName": ["Ann Ëxample".encode()],
            "userAccountControl": [b"514"],
            "employeeID": [b"42"],
            "department": [b"R&D"],
            "streetAddress": [b"Main St 1"],
            "manager": [b"CN=Boss,OU=Staff,DC=corp,DC=example,DC=com"],
            "mail": [b"ann@example.com"],
        },
    }
    user = source._to_user(entry, lambda dn: manager if dn.startswith("CN=Boss") else None)
    assert user is not None
    assert user.id == str(guid)
    assert user.attributes == {
        "objectId": str(guid),
        "userPrincipalName": "ann@corp.example.com",
        "mailNickname": "ann",
        "givenName": "Ann",
        "surname": "Example",
        "displayName": "Ann Ëxample",
        "employeeId": "42",
        "department": "R&D",
        "streetAddress": "Main St 1",
        "mail": "ann@example.com",
        "manager": manager,
        "accountEnabled": False,
        "IsSoftDeleted": False,
        "onPremisesDistinguishedName": entry["dn"],
    }
    group = source._to_group(
        {"dn": "CN=G,DC=corp,DC=example,DC=com",
         "raw": {"objectGUID": [guid.bytes_le], "cn": [b"G"], "sAMAccountName": [b"g-sam"]}},
        lambda e: ("m1",),
    )
    assert group is not None and group.members == ("m1",)
    assert group.attributes["mailNickname"] == "g-sam" and group.attributes["displayName"] == "G"


def test_openldap_lock_attributes_without_a_server() -> None:
    source = LdapSource("ldap://x", None, None, "dc=example,dc=com")
    base = {"entryUUID": [b"6f0c1a2e-0000-4000-8000-000000000001"], "uid": [b"u"]}
    def enabled(extra: dict[str, list[bytes]]) -> object:
        user = source._to_user({"dn": "uid=u,dc=example,dc=com", "raw": {**base, **extra}}, lambda dn: None)
        assert user is not None
        return user.attributes["accountEnabled"]
    assert enabled({}) is True
    assert enabled({"pwdAccountLockedTime": [b"000001010000Z"]}) is False
    assert enabled({"nsAccountLock": [b"TRUE"]}) is False
    assert enabled({"nsAccountLock": [b"false"]}) is True
    user = source._to_user({"dn": "uid=u,dc=example,dc=com", "raw": base}, lambda dn: None)
    assert user is not None and user.attributes["userPrincipalName"] == "u@example.com"


# ------------------------------------------------------------------------------------------------ AD (ldap3 mock)

AD_BASE = "DC=corp,DC=example,DC=com"


def _ad_directory() -> tuple[ldap3.Server, dict[str, uuid.UUID]]:
    """An in-memory AD-shaped DIT (ldap3's MOCK_SYNC strategy): 3 users, 1 group, 1 tombstone, 1 computer."""
    server = ldap3.Server("fake-ad", get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=f"CN=svc,{AD_BASE}", password="pw", client_strategy=ldap3.MOCK_SYNC,
                            check_names=False)
    guids = {name: uuid.uuid4() for name in ("ann", "bob", "cid", "staff", "gone", "pc1")}
    add = conn.strategy.add_entry
    add(f"CN=svc,{AD_BASE}", {"objectClass": ["top", "person"], "userPassword": "pw"})
    for name, uac, usn, manager in (("ann", "512", "101", None), ("bob", "514", "102", "ann"),
                                    ("cid", "66048", "103", "ann")):
        attrs: dict[str, object] = {
            "objectClass": ["top", "person", "organizationalPerson", "user"], "objectCategory": "person",
            "objectGUID": guids[name].bytes_le, "sAMAccountName": name, "userPrincipalName": f"{name}@corp.example.com",
            "givenName": name.title(), "sn": "Example", "userAccountControl": uac, "uSNChanged": usn,
            "department": "IT", "employeeID": f"E-{name}", "c": "NL", "l": "Utrecht",
        }
        if manager:
            attrs["manager"] = f"cn={manager},ou=staff,{AD_BASE.lower()}"  # different case than the entry's DN
        add(f"CN={name},OU=Staff,{AD_BASE}", attrs)
    add(f"CN=pc1,OU=Staff,{AD_BASE}", {"objectClass": ["top", "person", "user", "computer"], "objectCategory":
                                       "computer", "objectGUID": guids["pc1"].bytes_le, "uSNChanged": "104"})
    add(f"CN=staff,OU=Groups,{AD_BASE}", {
        "objectClass": ["top", "group"], "objectGUID": guids["staff"].bytes_le, "cn": "staff",
        "sAMAccountName": "staff-sam", "description": "All staff", "uSNChanged": "105",
        "member": [f"CN=ann,OU=Staff,{AD_BASE}", f"CN=bob,OU=Staff,{AD_BASE}", f"CN=outsider,OU=Other,{AD_BASE}"],
    })
    add(f"CN=gone\\0ADEL:{guids['gone']},CN=Deleted Objects,{AD_BASE}", {
        "objectClass": ["top", "person", "user"], "objectGUID": guids["gone"].bytes_le, "isDeleted": "TRUE",
        "uSNChanged": "200",
    })
    return server, guids


def _ad_source(server: ldap3.Server, monkeypatch: pytest.MonkeyPatch, usn: list[int], **kwargs: object) -> LdapSource:
    source = LdapSource("ldap://dc1.corp.example.com", f"CN=svc,{AD_BASE}", "pw", AD_BASE, flavor="ad",
                        users_base=f"OU=Staff,{AD_BASE}", groups_base=f"OU=Groups,{AD_BASE}", page_size=2,
                        **kwargs)  # type: ignore[arg-type]

    def open_mock() -> ldap3.Connection:
        conn = ldap3.Connection(server, user=f"CN=svc,{AD_BASE}", password="pw", client_strategy=ldap3.MOCK_SYNC,
                                check_names=False)
        assert conn.bind()
        return conn

    monkeypatch.setattr(source, "_open", open_mock)
    monkeypatch.setattr(source, "_highest_usn", lambda: usn[0])  # the mock has no root DSE
    # the mock refuses the (critical) show-deleted control: check it is sent, then search without it
    paged = source._paged
    source.show_deleted_searches = 0  # type: ignore[attr-defined]

    def paged_without_show_deleted(base: str, ldap_filter: str, attributes: object, *,
                                   controls: object = None) -> object:
        if controls is not None:
            assert controls == [("1.2.840.113556.1.4.417", True, None)] and "(isDeleted=TRUE)" in ldap_filter
            source.show_deleted_searches += 1  # type: ignore[attr-defined]
        return paged(base, ldap_filter, attributes)  # type: ignore[arg-type]

    monkeypatch.setattr(source, "_paged", paged_without_show_deleted)
    return source


def test_ad_full_read_and_increments_with_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    server, guids = _ad_directory()
    usn = [150]
    source = _ad_source(server, monkeypatch, usn, track_deletes=False,
                        assignment_group_dns=[f"CN=staff,OU=Groups,{AD_BASE}"])
    objects = list(source.read_all())
    users = {o.attributes["mailNickname"]: o for o in objects if o.object_type == "User"}
    assert set(users) == {"ann", "bob", "cid"}  # the computer is not a person
    ann, bob, cid = users["ann"], users["bob"], users["cid"]
    assert ann.id == str(guids["ann"]) and ann.attributes["objectId"] == str(guids["ann"])
    assert ann.attributes["userPrincipalName"] == "ann@corp.example.com"
    assert ann.attributes["employeeId"] == "E-ann" and ann.attributes["country"] == "NL"
    assert ann.attributes["city"] == "Utrecht" and ann.attributes["department"] == "IT"
    assert ann.attributes["accountEnabled"] is True and "manager" not in ann.attributes
    assert bob.attributes["accountEnabled"] is False            # 514 = NORMAL_ACCOUNT | ACCOUNTDISABLE
    assert cid.attributes["accountEnabled"] is True             # 66048 = NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD
    assert bob.attributes["manager"] == str(guids["ann"]) == cid.attributes["manager"]
    groups = [o for o in objects if o.object_type == "Group"]
    assert len(groups) == 1
    staff = groups[0]
    assert staff.id == str(guids["staff"])
    assert staff.attributes["mailNickname"] == "staff-sam" and staff.attributes["displayName"] == "staff"
    assert staff.members == (str(guids["ann"]), str(guids["bob"]))  # the member outside the scope is dropped
    assert source.assignments() == Assignments(groups=frozenset({str(guids["staff"])}))

    mark = source.watermark()
    assert _Mark.decode(mark).usn == 150
    conn = source._open()
    conn.modify(f"CN=cid,OU=Staff,{AD_BASE}", {"title": [(ldap3.MODIFY_REPLACE, ["Boss"])],
                                                "uSNChanged": [(ldap3.MODIFY_REPLACE, ["151"])]})
    conn.unbind()
    usn[0] = 201
    changes = source.read_changes(mark)
    assert [(o.object_type, o.id, o.deleted) for o in changes.objects] == [
        ("User", str(guids["cid"]), False),
        ("User", str(guids["gone"]), True),   # isDeleted=TRUE tombstone found with the show-deleted control
    ]
    assert changes.objects[0].attributes["jobTitle"] == "Boss"
    assert source.show_deleted_searches == 1  # type: ignore[attr-defined]
    assert _Mark.decode(changes.watermark).usn == 201
    assert source.read_changes(changes.watermark).objects == []
