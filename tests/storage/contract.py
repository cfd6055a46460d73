"""The storage contract: what every :class:`~scimgrip.storage.base.Storage` must do, as tests.

Subclass :class:`StorageContract` in a test module; it needs a ``storage`` fixture (``tests/conftest.py`` gives
one per backend). Filter tests compare the backend with the reference in-memory evaluator
(:func:`scimgrip.scim.filter.evaluate`), so SQL compilation and evaluation cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from scimgrip.scim.errors import InvalidValue, NotFound, PreconditionFailed, ScimError, Uniqueness
from scimgrip.scim.filter import evaluate, parse_and_bind
from scimgrip.scim.schema import CORE_GROUP, CORE_USER, DEFAULT_REGISTRY, ENTERPRISE_USER
from scimgrip.storage.base import Change, MemberDelta, Page, Query, Storage, StoredResource

URNS = {"User": CORE_USER, "Group": CORE_GROUP}


def q(text: str | None = None, rt: str = "User", **kw: Any) -> Query:
    flt = parse_and_bind(text, DEFAULT_REGISTRY, rt) if text else None
    return Query(filter=flt, **kw)


def ids(page: Page) -> list[str]:
    return [r.id for r in page.resources]


def same(change_doc: dict[str, Any]) -> Callable[[StoredResource], Change]:
    return lambda cur: Change(change_doc)


def keep(cur: StoredResource) -> Change:
    return Change(cur.doc)


def members_of(storage: Storage, t: int, gid: str) -> set[str]:
    g = storage.get(t, "Group", gid)
    assert g.members is not None
    return {m.value for m in g.members}


def client_view(r: StoredResource) -> dict[str, Any]:
    """What the reference evaluator sees: doc + id + meta (+ members/groups)."""
    doc = dict(r.doc)
    doc["id"] = r.id
    doc["meta"] = {"resourceType": r.resource_type, "created": r.created.isoformat(),
                   "lastModified": r.last_modified.isoformat()}
    if r.members is not None:
        doc["members"] = [{"value": m.value, "type": m.type, "display": m.display} for m in r.members]
    if r.groups is not None:
        doc["groups"] = [{"value": m.value, "type": m.type, "display": m.display} for m in r.groups]
    return doc


def all_pages(storage: Storage, t: int, rt: str, query: Query) -> list[str]:
    out: list[str] = []
    cursor = ""
    while True:
        page = storage.search(t, rt, Query(filter=query.filter, sort_by=query.sort_by,
                                           descending=query.descending, count=query.count, cursor=cursor))
        out.extend(ids(page))
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


class StorageContract:
    """Backend-independent guarantees of ``Storage`` (see ``storage/base.py``)."""

    # -- fixtures ----------------------------------------------------------------------------------------------
    @pytest.fixture
    def tenant(self, storage: Storage) -> int:
        return storage.create_tenant("acme").id

    @pytest.fixture
    def other(self, storage: Storage) -> int:
        return storage.create_tenant("globex").id

    @staticmethod
    def user(storage: Storage, t: int, user_name: str, **extra: Any) -> StoredResource:
        return storage.create(t, "User", {"schemas": [CORE_USER], "userName": user_name, **extra})

    @staticmethod
    def group(storage: Storage, t: int, name: str, members: list[str] | None = None) -> StoredResource:
        return storage.create(t, "Group", {"schemas": [CORE_GROUP], "displayName": name}, members or [])

    # -- tenants -----------------------------------------------------------------------------------------------
    def test_tenants(self, storage: Storage) -> None:
        a = storage.create_tenant("Acme", {"tz": "UTC"})
        assert a.settings == {"tz": "UTC"} and a.created.tzinfo is not None
        with pytest.raises(Uniqueness):
            storage.create_tenant("ACME")
        b = storage.create_tenant("Globex")
        got = storage.get_tenant("acme")
        assert got is not None and got.id == a.id and got.name == "Acme" and got.settings == {"tz": "UTC"}
        assert got.created == a.created
        by_id = storage.get_tenant_by_id(b.id)
        assert by_id is not None and by_id.name == "Globex"
        assert storage.get_tenant("nope") is None and storage.get_tenant_by_id(999999) is None
        assert [x.name for x in storage.list_tenants()] == ["Acme", "Globex"]
        assert storage.count_tenants() == 2

    # -- create / get / update / delete ------------------------------------------------------------------------
    def test_create_get_round_trip(self, storage: Storage, tenant: int) -> None:
        doc = {"schemas": [CORE_USER, ENTERPRISE_USER], "userName": "Zoë@Example.com", "active": True,
               "name": {"givenName": "Zoë", "familyName": "Ω"}, "emails": [{"value": "z@x.com", "type": "work"}],
               ENTERPRISE_USER: {"employeeNumber": "42", "manager": {"value": "m"}}, "x": 1.5, "big": 10 ** 15}
        created = storage.create(tenant, "User", doc)
        assert created.version == 1 and created.created == created.last_modified
        assert created.created.tzinfo is not None and created.created.utcoffset() == dt.timedelta(0)
        assert len(created.id) == 32
        got = storage.get(tenant, "User", created.id)
        assert got.doc == doc and list(got.doc) == list(doc)
        assert got.created == created.created and got.last_modified == created.last_modified
        assert got.version == 1 and got.groups == [] and got.members is None
        assert storage.get(tenant, "User", created.id, include_groups=False).groups is None
        with pytest.raises(NotFound):
            storage.get(tenant, "Group", created.id)
        with pytest.raises(NotFound):
            storage.get(tenant, "User", "missing")

    def test_update_bumps_version_on_change_only(self, storage: Storage, tenant: int) -> None:
        u = self.user(storage, tenant, "bob", active=True)
        same_doc = storage.update(tenant, "User", u.id, keep)
        assert same_doc.version == 1 and same_doc.last_modified == u.last_modified
        time.sleep(0.002)
        new = {**u.doc, "active": False, "displayName": "Bob"}
        after = storage.update(tenant, "User", u.id, same(new))
        assert after.version == 2 and after.doc == new and after.last_modified > u.last_modified
        assert after.created == u.created
        got = storage.get(tenant, "User", u.id)
        assert got.version == 2 and got.doc == new and got.last_modified == after.last_modified
        # apply that mutates the given doc in place is still seen as a change
        def mutate(cur: StoredResource) -> Change:
            cur.doc["title"] = "CEO"
            return Change(cur.doc)
        assert storage.update(tenant, "User", u.id, mutate).version == 3
        with pytest.raises(NotFound):
            storage.update(tenant, "User", "missing", keep)

    def test_expected_version_mismatch_writes_nothing(self, storage: Storage, tenant: int) -> None:
        u = self.user(storage, tenant, "bob")
        with pytest.raises(PreconditionFailed):
            storage.update(tenant, "User", u.id, same({**u.doc, "title": "x"}), expected_version=7)
        assert storage.get(tenant, "User", u.id).doc == u.doc
        ok = storage.update(tenant, "User", u.id, same({**u.doc, "title": "x"}), expected_version=1)
        assert ok.version == 2
        with pytest.raises(PreconditionFailed):
            storage.delete(tenant, "User", u.id, expected_version=1)
        storage.delete(tenant, "User", u.id, expected_version=2)
        with pytest.raises(NotFound):
            storage.get(tenant, "User", u.id)

    def test_apply_raising_writes_nothing(self, storage: Storage, tenant: int) -> None:
        u = self.user(storage, tenant, "bob")
        g = self.group(storage, tenant, "g", [u.id])

        def boom(cur: StoredResource) -> Change:
            raise InvalidValue("no")

        with pytest.raises(InvalidValue):
            storage.update(tenant, "User", u.id, boom)
        # member delta that fails (unknown member) rolls back the doc change and the removal too
        with pytest.raises(InvalidValue, match="member 'nope' does not exist"):
            storage.update(tenant, "Group", g.id, lambda cur: Change(
                {**cur.doc, "displayName": "renamed"}, MemberDelta(add=["nope"], remove=[u.id])))
        got = storage.get(tenant, "Group", g.id)
        assert got.doc["displayName"] == "g" and got.version == 1 and members_of(storage, tenant, g.id) == {u.id}

    def test_delete(self, storage: Storage, tenant: int) -> None:
        u = self.user(storage, tenant, "bob")
        storage.delete(tenant, "User", u.id)
        with pytest.raises(NotFound):
            storage.delete(tenant, "User", u.id)
        # the userName is free again
        self.user(storage, tenant, "BOB")

    # -- uniqueness --------------------------------------------------------------------------------------------
    def test_user_name_unique_case_insensitive(self, storage: Storage, tenant: int) -> None:
        self.user(storage, tenant, "Alice@x")
        with pytest.raises(Uniqueness) as err:
            self.user(storage, tenant, "alice@X")
        assert err.value.status == 409 and "alice@X" in err.value.detail
        bob = self.user(storage, tenant, "bob")
        with pytest.raises(Uniqueness, match="ALICE@X"):
            storage.update(tenant, "User", bob.id, same({**bob.doc, "userName": "ALICE@X"}))
        assert storage.get(tenant, "User", bob.id).doc["userName"] == "bob"
        # renaming to a case variant of one's own name is fine
        assert storage.update(tenant, "User", bob.id, same({**bob.doc, "userName": "Bob"})).version == 2
        # groups have no userName: many groups with the same displayName are allowed
        self.group(storage, tenant, "same")
        self.group(storage, tenant, "same")

    def test_user_name_race_has_one_winner(self, storage: Storage, tenant: int) -> None:
        barrier = threading.Barrier(8)

        def attempt(i: int) -> str:
            barrier.wait()
            try:
                self.user(storage, tenant, "Race@x" if i % 2 else "race@X")
                return "ok"
            except Uniqueness:
                return "dup"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(attempt, range(8)))
        assert outcomes.count("ok") == 1 and outcomes.count("dup") == 7
        assert storage.search(tenant, "User", q()).total == 1

    # -- tenant isolation --------------------------------------------------------------------------------------
    def test_tenant_isolation(self, storage: Storage, tenant: int, other: int) -> None:
        a = self.user(storage, tenant, "same@x")
        b = self.user(storage, other, "same@x")
        gb = self.group(storage, other, "gb", [b.id])
        for rt, rid in (("User", b.id), ("Group", gb.id)):
            with pytest.raises(NotFound):
                storage.get(tenant, rt, rid)
            with pytest.raises(NotFound):
                storage.update(tenant, rt, rid, keep)
            with pytest.raises(NotFound):
                storage.delete(tenant, rt, rid)
        assert ids(storage.search(tenant, "User", q())) == [a.id]
        assert ids(storage.search(tenant, "User", q(f'id eq "{b.id}"'))) == []
        assert storage.search(tenant, "Group", q()).total == 0
        assert storage.existing_ids(tenant, [a.id, b.id]) == {a.id: "User"}
        ga = self.group(storage, tenant, "ga")
        with pytest.raises(InvalidValue):
            storage.update(tenant, "Group", ga.id, lambda c: Change(c.doc, MemberDelta(add=[b.id])))
        with pytest.raises(InvalidValue):
            self.group(storage, tenant, "gx", [b.id])
        assert members_of(storage, other, gb.id) == {b.id}
        assert storage.get(other, "User", b.id).version == 1

    # -- members -----------------------------------------------------------------------------------------------
    def test_members(self, storage: Storage, tenant: int) -> None:
        u1 = self.user(storage, tenant, "u1", displayName="User One")
        u2 = self.user(storage, tenant, "u2")
        u3 = self.user(storage, tenant, "u3")
        sub = self.group(storage, tenant, "sub")
        g = self.group(storage, tenant, "g", [u1.id])
        assert g.members is not None and [m.value for m in g.members] == [u1.id]

        def delta(**kw: Any) -> Callable[[StoredResource], Change]:
            return lambda cur: Change(cur.doc, MemberDelta(**kw))

        r = storage.update(tenant, "Group", g.id, delta(add=[u2.id, sub.id, u2.id]))
        assert r.version == 2 and r.members is None
        assert storage.update(tenant, "Group", g.id, delta(add=[u1.id, u2.id])).version == 2   # idempotent
        got = storage.get(tenant, "Group", g.id)
        assert got.members is not None
        by_id = {m.value: m for m in got.members}
        assert set(by_id) == {u1.id, u2.id, sub.id}
        # members carry their type; display is not joined in (it is optional and read-only, RFC 7643 §4.2)
        assert by_id[u1.id].type == "User" and by_id[sub.id].type == "Group"
        assert all(m.display is None for m in got.members)
        assert "members" not in got.doc
        # a stale members/groups copy in a document is never stored: the rows are the truth
        assert "members" not in storage.update(tenant, "Group", g.id, lambda c: Change(
            {**c.doc, "members": [{"value": "x"}]})).doc
        assert storage.get(tenant, "Group", g.id).version == 2
        assert "groups" not in self.user(storage, tenant, "u4", groups=[{"value": g.id}]).doc
        assert storage.get(tenant, "Group", g.id, include_members=False).members is None
        # the user's groups
        groups = storage.get(tenant, "User", u1.id).groups
        assert groups is not None and [(m.value, m.display, m.type) for m in groups] == [(g.id, "g", "direct")]
        # remove only listed; absent ids ignored; no change → no bump
        r = storage.update(tenant, "Group", g.id, delta(remove=[u2.id, u3.id]))
        assert r.version == 3 and members_of(storage, tenant, g.id) == {u1.id, sub.id}
        assert storage.update(tenant, "Group", g.id, delta(remove=[u3.id])).version == 3
        # replace with the same set is not a change; remove_all empties
        assert storage.update(tenant, "Group", g.id, delta(remove_all=True, add=[sub.id, u1.id])).version == 3
        r = storage.update(tenant, "Group", g.id, delta(remove_all=True, add=[u3.id]), needs_members=True)
        assert r.version == 4 and r.members is not None and [m.value for m in r.members] == [u3.id]
        r = storage.update(tenant, "Group", g.id, delta(remove_all=True))
        assert r.version == 5 and members_of(storage, tenant, g.id) == set()
        assert storage.update(tenant, "Group", g.id, delta(remove_all=True)).version == 5
        # apply sees members only when asked
        seen: list[Any] = []
        storage.update(tenant, "Group", g.id, lambda c: (seen.append(c.members), Change(c.doc))[1])
        storage.update(tenant, "Group", g.id, lambda c: (seen.append(c.members), Change(c.doc))[1],
                       needs_members=True)
        assert seen == [None, []]

    def test_concurrent_member_changes_all_stick(self, storage: Storage, tenant: int) -> None:
        users = [self.user(storage, tenant, f"m{i}").id for i in range(40)]
        g = self.group(storage, tenant, "big", users[:20])

        def work(i: int) -> None:
            # thread i adds users[20+i] and removes users[i]
            storage.update(tenant, "Group", g.id, lambda c: Change(
                c.doc, MemberDelta(add=[users[20 + i]], remove=[users[i]])))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(20)))
        assert members_of(storage, tenant, g.id) == set(users[20:])
        assert storage.get(tenant, "Group", g.id).version == 21

    def test_delete_removes_memberships(self, storage: Storage, tenant: int) -> None:
        u = self.user(storage, tenant, "u")
        v = self.user(storage, tenant, "v")
        inner = self.group(storage, tenant, "inner", [u.id])
        outer = self.group(storage, tenant, "outer", [u.id, v.id, inner.id])
        storage.delete(tenant, "User", u.id)
        assert members_of(storage, tenant, outer.id) == {v.id, inner.id}
        assert members_of(storage, tenant, inner.id) == set()
        storage.delete(tenant, "Group", inner.id)
        assert members_of(storage, tenant, outer.id) == {v.id}
        storage.delete(tenant, "Group", outer.id)
        assert storage.get(tenant, "User", v.id).groups == []
        # a new resource with a fresh id is not a member of anything
        assert storage.search(tenant, "Group", q("members pr", "Group")).total == 0

    def test_existing_ids(self, storage: Storage, tenant: int) -> None:
        u = self.user(storage, tenant, "u")
        g = self.group(storage, tenant, "g")
        assert storage.existing_ids(tenant, [u.id, g.id, "nope", u.id]) == {u.id: "User", g.id: "Group"}
        assert storage.existing_ids(tenant, []) == {}

    def test_iter_all(self, storage: Storage, tenant: int) -> None:
        users = [self.user(storage, tenant, f"i{i}").id for i in range(7)]
        g = self.group(storage, tenant, "g", users[:3])
        assert [r.id for r in storage.iter_all(tenant, "User", batch=3)] == users
        groups = list(storage.iter_all(tenant, "Group"))
        assert [r.id for r in groups] == [g.id]
        assert groups[0].members is not None and {m.value for m in groups[0].members} == set(users[:3])

    # -- filters -----------------------------------------------------------------------------------------------
    @pytest.fixture
    def people(self, storage: Storage, tenant: int) -> list[StoredResource]:
        specs: list[dict[str, Any]] = [
            {"userName": "Alice@Example.com", "active": True, "externalId": "EXT-1", "displayName": "Alice",
             "title": "Engineer", "name": {"givenName": "Alice", "familyName": "Zeta"},
             "emails": [{"value": "Alice@Example.com", "type": "work", "primary": True},
                        {"value": "alice@home.net", "type": "home"}]},
            {"userName": "bob@example.com", "active": False, "externalId": "ext-1", "displayName": "Bob",
             "name": {"givenName": "Bob", "familyName": "Young"},
             "emails": [{"value": "bob@home.net", "type": "home"}],
             "phoneNumbers": [{"value": "+1 555 0100", "type": "work"}]},
            {"userName": "carol%_x@example.com", "externalId": "EXT-2", "displayName": "Carol",
             "name": {"givenName": "Carol"}, ENTERPRISE_USER: {"department": "Sales"},
             "emails": [{"value": "carol@example.com", "type": "work"}]},
            {"userName": "carolAx@example.com", "active": True, "title": "",
             "emails": [{"value": "CAROL@EXAMPLE.COM", "type": "Work"}]},
            {"userName": "Dave", "active": True, "displayName": "dave", "name": {"givenName": "X"},
             ENTERPRISE_USER: {"department": "sales", "employeeNumber": "7"}},
            {"userName": "éve", "active": False, "displayName": "Ève", "emails": [{"type": "work"}]},
        ]
        out = []
        for s in specs:
            out.append(storage.create(tenant, "User", {"schemas": [CORE_USER], **s}))
            time.sleep(0.002)
        return out

    FILTERS = [
        'userName eq "alice@example.com"', 'userName eq "ALICE@EXAMPLE.COM"', 'userName ne "dave"',
        'userName co "EXAMPLE"', 'userName co "%_"', 'userName co "%"', 'userName co "_"', 'userName co ""',
        'userName sw "carol"', 'userName sw "CAROL%"', 'userName ew ".COM"', 'userName ew "_x@example.com"',
        'userName gt "carol"', 'userName ge "dave"', 'userName lt "bob@example.com"', 'userName le "Bob@example.com"',
        'userName pr', 'userName eq "ÉVE"', 'userName sw "é"',
        'active eq true', 'active eq false', 'active ne true', 'active pr', 'active eq null', 'not (active pr)',
        'externalId eq "EXT-1"', 'externalId eq "ext-1"', 'externalId co "XT"', 'externalId sw "ext"',
        'externalId ew "T-1"', 'externalId pr', 'externalId ne "EXT-1"', 'externalId gt "EXT-1"',
        'displayName eq "ève"', 'displayName sw "CA"', 'displayName lt "c"', 'displayName eq null',
        'emails[type eq "work"].value eq "alice@example.com"', 'emails[type eq "work" and value co "CAROL"]',
        'emails[type eq "home"]', 'emails[not (type eq "work")]', 'emails[value pr]', 'emails[primary eq true]',
        'emails.value co "home"', 'emails.value eq "carol@example.com"', 'emails.value ne "bob@home.net"',
        'emails.type eq "work"', 'emails pr', 'emails.value pr', 'emails.value eq null', 'emails eq "bob@home.net"',
        'emails.display pr', 'phoneNumbers.value sw "+1"', 'phoneNumbers[type eq "work"]',
        'userName sw "a" or userName sw "b"', 'active eq true and emails.type eq "work"',
        'not (userName sw "carol") and active eq true', 'not (emails.value co "example")',
        'name.givenName eq "X"', 'name.givenName sw "a"', 'title pr', 'not (title pr)', 'title eq "engineer"',
        'title pr or userName eq "Dave"', 'title pr and active eq true', 'not (title pr and active eq true)',
        f'{ENTERPRISE_USER}:department eq "sales"', 'urn:ietf:params:scim:schemas:core:2.0:User:userName eq "dave"',
        'meta.resourceType eq "User"', 'meta.resourceType eq "Group"', 'meta.created pr',
        'meta.lastModified gt "2000-01-01T00:00:00Z"', 'meta.lastModified lt "2000-01-01T00:00:00Z"',
        'meta.created eq "not a date"', 'meta.created ne "not a date"',
    ]

    @pytest.mark.parametrize("text", FILTERS)
    def test_filter_matches_reference(self, storage: Storage, tenant: int, people: list[StoredResource],
                                      text: str) -> None:
        flt = parse_and_bind(text, DEFAULT_REGISTRY, "User")
        expected = [p.id for p in people if evaluate(flt, client_view(p), CORE_USER)]
        page = storage.search(tenant, "User", Query(filter=flt))
        assert page.total == len(expected), text
        assert ids(page) == expected, text
        # the count-only form gives the same exact total
        assert storage.search(tenant, "User", Query(filter=flt, count=0)) == Page([], len(expected), 1)

    def test_filter_like_wildcards_are_literal(self, storage: Storage, tenant: int,
                                               people: list[StoredResource]) -> None:
        page = storage.search(tenant, "User", q('userName co "%_"'))
        assert [r.doc["userName"] for r in page.resources] == ["carol%_x@example.com"]
        assert storage.search(tenant, "User", q('userName co "l%_x@"')).total == 1
        assert storage.search(tenant, "User", q('userName co "l_x"')).total == 0

    def test_filter_meta_last_modified(self, storage: Storage, tenant: int, people: list[StoredResource]) -> None:
        cut = people[2].last_modified
        stamp = cut.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        later = ids(storage.search(tenant, "User", q(f'meta.lastModified gt "{stamp}"')))
        assert later == [p.id for p in people[3:]]
        assert ids(storage.search(tenant, "User", q(f'meta.lastModified ge "{stamp}"'))) == [p.id for p in people[2:]]
        assert ids(storage.search(tenant, "User", q(f'meta.lastModified eq "{stamp}"'))) == [people[2].id]
        offset = cut.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()
        assert ids(storage.search(tenant, "User", q(f'meta.lastModified le "{offset}"'))) == [
            p.id for p in people[:3]]
        # an update moves lastModified forward
        storage.update(tenant, "User", people[0].id, lambda c: Change({**c.doc, "title": "Boss"}))
        assert people[0].id in ids(storage.search(tenant, "User", q(f'meta.lastModified gt "{stamp}"')))

    def test_group_filters(self, storage: Storage, tenant: int) -> None:
        u1 = self.user(storage, tenant, "u1")
        u2 = self.user(storage, tenant, "u2")
        g1 = self.group(storage, tenant, "Admins", [u1.id, u2.id])
        g2 = self.group(storage, tenant, "users", [u2.id])
        g3 = self.group(storage, tenant, "empty")

        def found(text: str, rt: str = "Group") -> list[str]:
            return ids(storage.search(tenant, rt, q(text, rt)))

        assert found(f'members.value eq "{u1.id}"') == [g1.id]
        assert found(f'members eq "{u2.id.upper()}"') == [g1.id, g2.id]
        assert found(f'members[value eq "{u2.id}" and type eq "user"]') == [g1.id, g2.id]
        assert found(f'members.value ne "{u1.id}"') == [g2.id, g3.id]
        assert found('members pr') == [g1.id, g2.id]
        assert found('not (members pr)') == [g3.id]
        assert found('displayName eq "admins"') == [g1.id]
        assert found(f'groups.value eq "{g2.id}"', "User") == [u2.id]
        assert found('groups[display eq "Admins"]', "User") == [u1.id, u2.id]
        page = storage.search(tenant, "Group", q(f'members.value eq "{u1.id}"', "Group", include_members=False))
        assert page.resources[0].members is None
        page = storage.search(tenant, "User", q(include_groups=False))
        assert all(r.groups is None for r in page.resources)
        page = storage.search(tenant, "Group", q(rt="Group"))
        assert [len(r.members or []) for r in page.resources] == [2, 1, 0]

    # -- sorting and paging ------------------------------------------------------------------------------------
    def test_sort(self, storage: Storage, tenant: int, people: list[StoredResource]) -> None:
        def names(sort_by: str, descending: bool = False, flt: str | None = None) -> list[str]:
            page = storage.search(tenant, "User", q(flt, sort_by=sort_by, descending=descending))
            return [r.doc["userName"] for r in page.resources]

        by_name = sorted((p.doc["userName"] for p in people), key=str.lower)
        assert names("userName") == by_name
        assert names("userName", True) == by_name[::-1]
        assert names("meta.created") == [p.doc["userName"] for p in people]
        assert names("meta.lastModified", True) == [p.doc["userName"] for p in people][::-1]
        # displayName: missing values last when ascending, first when descending
        assert names("displayName") == ["Alice@Example.com", "bob@example.com", "carol%_x@example.com", "Dave",
                                        "éve", "carolAx@example.com"]
        assert names("displayName", True)[0] == "carolAx@example.com"
        # in memory: name.familyName, missing last
        assert names("name.familyName")[:2] == ["bob@example.com", "Alice@Example.com"]
        assert names("name.familyName", True)[-2:] == ["Alice@Example.com", "bob@example.com"]
        assert names("emails.value")[0] == "Alice@Example.com"    # primary email first
        # sort with a filter evaluated in memory
        assert names("userName", True, "title pr or active eq false") == ["éve", "bob@example.com",
                                                                          "Alice@Example.com"]

    def test_index_paging(self, storage: Storage, tenant: int) -> None:
        made = [self.user(storage, tenant, f"p{i:02d}").id for i in range(25)]
        page = storage.search(tenant, "User", q(start_index=11, count=10))
        assert ids(page) == made[10:20] and page.total == 25 and page.start_index == 11 and page.next_cursor is None
        assert ids(storage.search(tenant, "User", q(start_index=21, count=10))) == made[20:]
        page = storage.search(tenant, "User", q(start_index=30, count=10))
        assert page.resources == [] and page.total == 25
        page = storage.search(tenant, "User", q(count=0))
        assert page.resources == [] and page.total == 25
        assert ids(storage.search(tenant, "User", q(start_index=0, count=2))) == made[:2]
        # in-memory path pages the same way
        page = storage.search(tenant, "User", q('userName sw "p" and title eq null', start_index=24, count=5))
        assert ids(page) == made[23:] and page.total == 25
        page = storage.search(tenant, "User", q(sort_by="userName", descending=True, start_index=2, count=3))
        assert ids(page) == made[::-1][1:4]

    @pytest.mark.parametrize(("flt", "sort_by", "descending"), [
        (None, None, False), (None, "userName", False), (None, "userName", True), (None, "displayName", True),
        (None, "meta.created", True), ('title eq null', None, False), ('title eq null', "name.familyName", True),
        ('userName sw "c" or externalId pr', "externalId", False),
    ])
    def test_cursor_paging_visits_each_once(self, storage: Storage, tenant: int, flt: str | None,
                                            sort_by: str | None, descending: bool) -> None:
        made = []
        for i in range(250):
            extra: dict[str, Any] = {}
            if i % 3:
                extra["displayName"] = f"D{i % 7}"
                extra["name"] = {"familyName": f"F{i % 11}"}
            if i % 5 == 0:
                extra["externalId"] = f"E{i % 4}"
            made.append(self.user(storage, tenant, f"c{(i * 37) % 250:03d}", **extra).id)
        query = q(flt, sort_by=sort_by, descending=descending, count=100)
        first = storage.search(tenant, "User", Query(filter=query.filter, sort_by=sort_by, descending=descending,
                                                     count=100, cursor=""))
        assert first.total == 250 or flt is not None
        seen = all_pages(storage, tenant, "User", query)
        assert len(seen) == len(set(seen)) == first.total
        expected = ids(storage.search(tenant, "User", Query(filter=query.filter, sort_by=sort_by,
                                                            descending=descending, count=1000)))
        assert seen == expected

    def test_cursor_errors(self, storage: Storage, tenant: int) -> None:
        for i in range(3):
            self.user(storage, tenant, f"u{i}")
        page = storage.search(tenant, "User", q(count=2, cursor=""))
        assert len(page.resources) == 2 and page.next_cursor
        last = storage.search(tenant, "User", q(count=2, cursor=page.next_cursor))
        assert len(last.resources) == 1 and last.next_cursor is None and last.total == 3
        for bad in ("!!!", "bm90IGpzb24", "e30"):
            with pytest.raises(ScimError) as err:
                storage.search(tenant, "User", q(count=2, cursor=bad))
            assert err.value.status == 400 and err.value.scim_type == "invalidCursor"
        with pytest.raises(ScimError, match="sort"):
            storage.search(tenant, "User", q(count=2, cursor=page.next_cursor, sort_by="userName"))

    # -- tokens ------------------------------------------------------------------------------------------------
    def test_tokens(self, storage: Storage, tenant: int, other: int) -> None:
        exp = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
        t1 = storage.add_token(tenant, "tok1", "a" * 64, exp, "ci")
        storage.add_token(tenant, "tok2", "b" * 64, None)
        storage.add_token(other, "tok3", "c" * 64, None)
        with pytest.raises(Uniqueness):
            storage.add_token(tenant, "tok4", "a" * 64, None)
        found = storage.find_token("a" * 64)
        assert found == t1 and found is not None and found.expires == exp and found.description == "ci"
        assert storage.find_token("d" * 64) is None
        assert [t.id for t in storage.list_tokens(tenant)] == ["tok1", "tok2"]
        assert not storage.revoke_token(tenant, "tok3")
        assert storage.revoke_token(tenant, "tok1")
        revoked = storage.find_token("a" * 64)
        assert revoked is not None and revoked.revoked is not None
        assert storage.revoke_token(tenant, "tok1")        # still there: True, time kept
        again = storage.find_token("a" * 64)
        assert again is not None and again.revoked == revoked.revoked
        when = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
        storage.touch_tokens({"tok2": when, "tok3": when})
        storage.touch_tokens({"tok2": when - dt.timedelta(days=1)})   # never goes backwards
        t2 = storage.find_token("b" * 64)
        assert t2 is not None and t2.last_used == when

    # -- request log -------------------------------------------------------------------------------------------
    def test_request_log(self, storage: Storage, tenant: int, other: int) -> None:
        at = dt.datetime(2025, 5, 1, tzinfo=dt.UTC)
        storage.append_request_log([
            {"tenant_id": tenant, "at": at + dt.timedelta(seconds=i), "method": "GET", "path": f"/Users/{i}",
             "status": 200, "duration_ms": 1.5, "outcome": "ok", "detail": None, "request_body": None,
             "response_body": '{"x":1}'} for i in range(10)])
        storage.append_request_log([{"tenant_id": other, "at": at, "method": "POST", "path": "/Users",
                                     "status": 201, "duration_ms": 3.0}])
        rows = storage.list_request_log(tenant, limit=3)
        assert [r["path"] for r in rows] == ["/Users/9", "/Users/8", "/Users/7"]
        assert rows[0]["at"] == at + dt.timedelta(seconds=9) and rows[0]["status"] == 200
        assert rows[0]["response_body"] == '{"x":1}' and rows[0]["tenant_id"] == tenant
        assert storage.prune_request_log(tenant, keep=4) == 6
        assert [r["path"] for r in storage.list_request_log(tenant)] == [f"/Users/{i}" for i in (9, 8, 7, 6)]
        assert storage.prune_request_log(tenant, keep=4) == 0
        assert len(storage.list_request_log(other)) == 1
        assert storage.prune_request_log(tenant, keep=0) == 4

    # -- delete_tenant -----------------------------------------------------------------------------------------
    def test_delete_tenant_removes_only_its_data(self, storage: Storage, tenant: int, other: int) -> None:
        for t in (tenant, other):
            u = self.user(storage, t, "same", emails=[{"value": "s@x", "type": "work"}])
            self.group(storage, t, "g", [u.id])
            storage.add_token(t, f"tok{t}", f"{t}" * 64, None)
            storage.append_request_log([{"tenant_id": t, "at": dt.datetime.now(dt.UTC), "method": "GET",
                                         "path": "/", "status": 200, "duration_ms": 1.0}])
        storage.delete_tenant(tenant)
        assert storage.get_tenant_by_id(tenant) is None and storage.count_tenants() == 1
        assert storage.search(tenant, "User", q()).total == 0
        assert storage.list_tokens(tenant) == [] and storage.list_request_log(tenant) == []
        assert storage.find_token(f"{tenant}" * 64) is None
        assert storage.search(other, "User", q('emails[type eq "work"].value eq "S@X"')).total == 1
        groups = storage.search(other, "Group", q(rt="Group"))
        assert groups.total == 1 and len(groups.resources[0].members or []) == 1
        assert len(storage.list_tokens(other)) == 1 and len(storage.list_request_log(other)) == 1
        # the name can be reused
        storage.create_tenant("acme")

    # -- batch (the unit of work of one /Bulk request, RFC 7644 §3.7) ------------------------------------------
    @staticmethod
    def _elsewhere(fn: Callable[[], Any]) -> Any:
        """``fn`` on another thread: outside this thread's batch, as another request would be."""
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(fn).result(timeout=60)

    def test_batch_isolates_a_failing_call_and_commits_the_rest_at_the_end(self, storage: Storage,
                                                                            tenant: int) -> None:
        def names() -> set[str]:
            return {r.doc["userName"] for r in storage.search(tenant, "User", q()).resources}

        with storage.batch():
            a = self.user(storage, tenant, "alice")
            # a uniqueness violation in the middle (on PostgreSQL it aborts the transaction: the savepoint
            # rollback must recover it), then a failing precondition and a failing apply
            with pytest.raises(Uniqueness):
                self.user(storage, tenant, "ALICE")
            with pytest.raises(PreconditionFailed):
                storage.update(tenant, "User", a.id, same({**a.doc, "title": "x"}), expected_version=7)

            def boom(cur: StoredResource) -> Change:
                raise InvalidValue("no")
            with pytest.raises(InvalidValue):
                storage.update(tenant, "User", a.id, boom)
            b = self.user(storage, tenant, "bob")
            storage.update(tenant, "User", b.id, same({**b.doc, "title": "boss"}))
            # reads inside the batch see its writes; a group can take members created in the batch
            assert storage.get(tenant, "User", b.id).doc["title"] == "boss"
            assert storage.existing_ids(tenant, [a.id, b.id]) == {a.id: "User", b.id: "User"}
            g = self.group(storage, tenant, "team", [a.id, b.id])
            assert names() == {"alice", "bob"}
            # nothing is visible to anyone else before the batch ends
            assert self._elsewhere(names) == set()
            assert self._elsewhere(lambda: storage.existing_ids(tenant, [a.id, g.id])) == {}
        assert self._elsewhere(names) == {"alice", "bob"}
        assert storage.get(tenant, "User", b.id).version == 2
        assert storage.get(tenant, "User", a.id).version == 1
        assert members_of(storage, tenant, g.id) == {a.id, b.id}

    def test_batch_rolls_back_entirely_on_an_exception(self, storage: Storage, tenant: int) -> None:
        kept = self.user(storage, tenant, "kept")
        with pytest.raises(RuntimeError), storage.batch():
            self.user(storage, tenant, "gone")
            storage.delete(tenant, "User", kept.id)
            raise RuntimeError("the caller failed")
        assert [r.id for r in storage.search(tenant, "User", q()).resources] == [kept.id]
        # the storage is usable afterwards, in and out of a batch
        with storage.batch():
            self.user(storage, tenant, "gone")
        assert storage.search(tenant, "User", q()).total == 2

    def test_batches_nest_and_other_tenants_are_untouched(self, storage: Storage, tenant: int,
                                                          other: int) -> None:
        with storage.batch():
            self.user(storage, tenant, "outer")
            with storage.batch():                   # joins the outer batch: committed with it
                self.user(storage, other, "inner")
            assert self._elsewhere(lambda: storage.search(other, "User", q()).total) == 0
        assert storage.search(tenant, "User", q()).total == 1 and storage.search(other, "User", q()).total == 1
