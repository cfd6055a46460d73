"""GraphSource over real HTTP against the fake Graph: mapping, paging, token cache, throttling, delta queries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scimgrip.engine.model import SourceObject
from scimgrip.engine.sources.file import FileSource
from scimgrip.engine.sources.graph import GraphError, GraphSource, user_attributes

from .fake_graph import (
    APP_OBJECT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    SERVICE_PRINCIPAL_ID,
    TENANT,
    FakeGraph,
    RunningGraph,
    serve,
)

SAMPLE = Path(__file__).parents[2] / "src" / "scimgrip" / "engine" / "sources" / "sample" / "directory.json"


@pytest.fixture(scope="module")
def expected() -> dict[str, SourceObject]:
    return {o.id: o for o in FileSource(SAMPLE).read_all()}


@pytest.fixture
def graph() -> Iterator[RunningGraph]:
    with serve(FakeGraph(SAMPLE)) as running:
        yield running


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_source(graph: RunningGraph, sleeps: Sleeps, **kwargs: object) -> GraphSource:
    options: dict[str, object] = {"app_object_id": APP_OBJECT_ID, "authority": graph.authority,
                                  "graph_url": graph.graph_url, "sleep": sleeps}
    options.update(kwargs)
    return GraphSource(TENANT, CLIENT_ID, CLIENT_SECRET, **options)  # type: ignore[arg-type]


def _by_id(objects: list[SourceObject]) -> dict[str, SourceObject]:
    return {o.id: o for o in objects}


def _soft_deleted(expected: dict[str, SourceObject]) -> set[str]:
    return {i for i, o in expected.items() if o.attributes.get("softDeleted")}


def assert_matches_sample(objects: list[SourceObject], expected: dict[str, SourceObject]) -> None:
    """What Graph returns, in Entra's vocabulary, is what the directory file says."""
    got = _by_id(objects)
    assert len(got) == len(objects) == len(expected)
    soft = _soft_deleted(expected)
    for object_id, want in expected.items():
        have = got[object_id]
        assert have.object_type == want.object_type and not have.deleted
        if want.object_type == "Group":
            assert have.attributes == want.attributes
            assert have.members == tuple(m for m in want.members or () if m not in soft)
        elif object_id in soft:   # deleted items come without the manager expansion
            assert have.attributes == {k: v for k, v in want.attributes.items() if k != "manager"}
        else:
            assert have.attributes == want.attributes


def test_mapping_of_graph_fields() -> None:
    item = {"id": "u1", "userPrincipalName": "a@b", "businessPhones": ["+31 1", "+31 2"], "mobilePhone": "+31 6",
            "otherMails": [], "mail": None, "accountEnabled": False, "manager": {"id": "m1"}, "surname": "Åberg"}
    assert user_attributes(item) == {"objectId": "u1", "userPrincipalName": "a@b", "telephoneNumber": "+31 1",
                                     "mobile": "+31 6", "accountEnabled": False, "manager": "m1",
                                     "surname": "Åberg"}


def test_read_all_matches_the_directory(graph: RunningGraph, sleeps: Sleeps,
                                        expected: dict[str, SourceObject]) -> None:
    source = make_source(graph, sleeps)
    objects = list(source.read_all())
    kinds = [o.object_type for o in objects]
    assert kinds == sorted(kinds, key=lambda k: k != "User")
    assert_matches_sample(objects, expected)
    fake = graph.fake
    assert fake.count("/v1.0/users?") == 3, "297 live users, pages of 100: @odata.nextLink followed"
    assert fake.count("/v1.0/groups/") == 20
    assert fake.token_requests == 1, "the token is cached"
    assert not sleeps
    source.close()


def test_assignments(graph: RunningGraph, sleeps: Sleeps) -> None:
    want = FileSource(SAMPLE).assignments()
    assert make_source(graph, sleeps).assignments() == want
    direct = make_source(graph, sleeps, app_object_id=None, service_principal_id=SERVICE_PRINCIPAL_ID)
    assert direct.assignments() == want
    assert make_source(graph, sleeps, app_object_id=None).assignments().users == frozenset()
    graph.fake.assign("new-user", "User")
    assert "new-user" in direct.assignments().users


def test_bad_credentials_and_tenant(graph: RunningGraph, sleeps: Sleeps) -> None:
    source = GraphSource(TENANT, CLIENT_ID, "wrong", authority=graph.authority, graph_url=graph.graph_url)
    with pytest.raises(GraphError, match="invalid_client") as info:
        source.watermark()
    assert info.value.status == 401
    other = GraphSource("nope", CLIENT_ID, CLIENT_SECRET, authority=graph.authority, graph_url=graph.graph_url)
    with pytest.raises(GraphError, match="Tenant not found"):
        list(other.read_all())


def test_revoked_token_is_renewed(graph: RunningGraph, sleeps: Sleeps) -> None:
    source = make_source(graph, sleeps)
    source.assignments()
    graph.fake.revoke_tokens()
    assert source.assignments().groups
    assert graph.fake.token_requests == 2


def test_not_found_is_an_error(graph: RunningGraph, sleeps: Sleeps) -> None:
    source = make_source(graph, sleeps, app_object_id="no-such-app")
    with pytest.raises(GraphError, match="Request_ResourceNotFound") as info:
        source.assignments()
    assert info.value.status == 404


@pytest.mark.parametrize(("status", "retry_after", "slept"), [(429, "2", 2.0), (503, "0.5", 0.5), (429, "", 1.0)])
def test_throttling_honours_retry_after(graph: RunningGraph, sleeps: Sleeps, status: int, retry_after: str,
                                        slept: float) -> None:
    source = make_source(graph, sleeps, app_object_id=None, service_principal_id=SERVICE_PRINCIPAL_ID)
    source.assignments()   # token first
    graph.fake.throttle(1, retry_after=retry_after, status=status)
    assert source.assignments().users
    assert sleeps == [slept]   # without Retry-After: exponential backoff from 1 s


def test_throttling_gives_up(graph: RunningGraph, sleeps: Sleeps) -> None:
    source = make_source(graph, sleeps, max_retries=2, app_object_id=None,
                         service_principal_id=SERVICE_PRINCIPAL_ID)
    source.assignments()
    graph.fake.throttle(5, retry_after="3")
    with pytest.raises(GraphError, match="429 TooManyRequests"):
        source.assignments()
    assert sleeps == [3.0, 3.0]


def test_network_errors_are_retried(sleeps: Sleeps) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(200, json={"value": [{"principalId": "u1", "principalType": "User"}]})

    source = GraphSource("t", "c", "s", service_principal_id="sp", sleep=sleeps,
                         http=httpx.Client(transport=httpx.MockTransport(handler)))
    assert source.assignments().users == {"u1"}
    assert sleeps == [1.0] and len(calls) == 3


# -- delta ---------------------------------------------------------------------------------------------------


def test_initial_delta_is_the_whole_directory(sleeps: Sleeps, expected: dict[str, SourceObject]) -> None:
    with serve(FakeGraph(SAMPLE, max_page_size=10, member_chunk=7)) as graph:
        _initial_delta(graph, sleeps, expected)


def _initial_delta(graph: RunningGraph, sleeps: Sleeps, expected: dict[str, SourceObject]) -> None:
    source = make_source(graph, sleeps)
    changes = source.read_changes("")
    assert changes.complete
    assert_matches_sample(changes.objects, expected)   # members@delta split over items and pages is merged
    assert changes.assignments == FileSource(SAMPLE).assignments()
    links = json.loads(changes.watermark)
    assert "/users/delta?$deltatoken=" in links["users"] and "/groups/delta?$deltatoken=" in links["groups"]
    rounds = graph.fake.count("/v1.0/groups/delta")
    assert rounds > 3, "a group's members@delta spans several items and pages"
    assert graph.fake.count("/v1.0/groups/") == rounds, "members come from members@delta, not per-group reads"
    again = source.read_changes(changes.watermark)
    assert again.objects == [] and not again.complete


def test_incremental_delta_returns_only_changes(graph: RunningGraph, sleeps: Sleeps,
                                                expected: dict[str, SourceObject]) -> None:
    fake = graph.fake
    source = make_source(graph, sleeps)
    mark = source.watermark()   # $deltatoken=latest: nothing is read
    assert fake.count("/v1.0/users?") == 0 and fake.count("/v1.0/groups?") == 0
    live = [o for o in expected.values() if o.object_type == "User" and not o.attributes.get("softDeleted")
            and o.attributes["accountEnabled"]]
    groups = [o for o in expected.values() if o.object_type == "Group"]
    changed, soft, hard, gone_from_bin = live[-1].id, live[-2].id, live[-3].id, live[-4].id
    sales = next(g for g in groups if g.attributes["displayName"] == "Sales")
    fake.update_user(changed, jobTitle="Staff Engineer", department="Research", manager=live[0].id,
                     businessPhones=["+31 20 123 4567"])
    fake.add_user({"id": "new-1", "userPrincipalName": "noe@contoso.example", "displayName": "Noé Çelik",
                   "accountEnabled": True, "givenName": "Noé"}, manager=live[0].id)
    fake.soft_delete_user(soft)
    fake.hard_delete_user(hard)
    fake.soft_delete_user(gone_from_bin)
    fake.hard_delete_user(gone_from_bin)   # purged before the next cycle: only a tombstone is left
    fake.add_member(sales.id, "new-1")
    fake.remove_member(sales.id, (sales.members or ())[0])
    fake.update_group(groups[-1].id, description="Renamed")

    changes = source.read_changes(mark)
    assert not changes.complete
    got = _by_id(changes.objects)
    assert set(got) == {changed, "new-1", soft, hard, gone_from_bin, sales.id, groups[-1].id} | {
        g.id for g in groups if hard in (g.members or ())}
    assert got[changed].attributes == {**expected[changed].attributes, "jobTitle": "Staff Engineer",
                                       "department": "Research", "manager": live[0].id,
                                       "telephoneNumber": "+31 20 123 4567"}
    assert got["new-1"].attributes == {"objectId": "new-1", "userPrincipalName": "noe@contoso.example",
                                       "displayName": "Noé Çelik", "accountEnabled": True, "givenName": "Noé",
                                       "manager": live[0].id}
    soft_attrs = dict(got[soft].attributes)
    assert soft_attrs.pop("softDeleted") is True and soft_attrs.pop("deletedDateTime").endswith("Z")
    assert not got[soft].deleted
    assert soft_attrs == {k: v for k, v in expected[soft].attributes.items() if k != "manager"}
    for tombstone in (hard, gone_from_bin):
        assert got[tombstone].deleted and got[tombstone].object_type == "User"
    want_sales = [m for m in (sales.members or ()) if m not in _soft_deleted(expected) and m != hard][1:]
    assert got[sales.id].members == (*want_sales, "new-1")
    assert got[sales.id].attributes == sales.attributes
    assert got[groups[-1].id].attributes["description"] == "Renamed"
    assert got[groups[-1].id].members is not None and len(got[groups[-1].id].members or ()) >= 2
    assert not sleeps

    follow = source.read_changes(changes.watermark)
    assert follow.objects == []
    fake.restore_user(soft)
    fake.delete_group(groups[-1].id)
    last = _by_id(source.read_changes(follow.watermark).objects)
    assert set(last) == {soft, groups[-1].id}
    assert "softDeleted" not in last[soft].attributes and last[soft].attributes["accountEnabled"] is True
    assert last[groups[-1].id].deleted and last[groups[-1].id].object_type == "Group"


def test_delta_pages_are_followed(graph: RunningGraph, sleeps: Sleeps) -> None:
    source = make_source(graph, sleeps)
    mark = source.watermark()
    for i in range(250):
        graph.fake.add_user({"id": f"bulk-{i}", "userPrincipalName": f"bulk{i}@contoso.example"})
    changes = source.read_changes(mark)
    assert len(changes.objects) == 250 and {o.id for o in changes.objects} == {f"bulk-{i}" for i in range(250)}
    assert graph.fake.count("/v1.0/users/delta") == 1 + 3   # watermark (latest) + one round of three pages
    assert graph.fake.count("/v1.0/users/bulk") == 0, "complete delta items are not read again"


def test_throttled_delta(graph: RunningGraph, sleeps: Sleeps) -> None:
    source = make_source(graph, sleeps)
    mark = source.watermark()
    graph.fake.update_user(next(iter(graph.fake.dir.users)), city="Zwolle")
    graph.fake.throttle(1, retry_after="7")
    changes = source.read_changes(mark)
    assert [o.attributes["city"] for o in changes.objects] == ["Zwolle"] and sleeps == [7.0]


def test_bad_watermark(graph: RunningGraph, sleeps: Sleeps) -> None:
    source = make_source(graph, sleeps)
    for bad in ("sha256:abc:1", json.dumps({"users": "x"}), "[]"):
        with pytest.raises(ValueError, match="not a Graph delta watermark"):
            source.read_changes(bad)


def test_partial_delta_items_are_read_whole(sleeps: Sleeps, expected: dict[str, SourceObject]) -> None:
    """Graph may send only the changed properties of an updated user: the source reads the user again."""
    with serve(FakeGraph(SAMPLE, partial_updates=True)) as graph:
        source = make_source(graph, sleeps)
        mark = source.watermark()
        user = next(o for o in expected.values() if o.object_type == "User" and "manager" in o.attributes
                    and not o.attributes.get("softDeleted"))
        graph.fake.update_user(user.id, jobTitle="Analyst", manager=None)
        [changed] = source.read_changes(mark).objects
        want = {k: v for k, v in user.attributes.items() if k != "manager"}
        assert changed.attributes == {**want, "jobTitle": "Analyst"}
        assert graph.fake.count(f"/v1.0/users/{user.id}") == 1


def test_members_are_users_and_groups_only(sleeps: Sleeps) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        if request.url.path == "/v1.0/groups":
            return httpx.Response(200, json={"value": [{"id": "g1", "displayName": "G", "description": None}]})
        if request.url.path == "/v1.0/groups/g1/members":
            return httpx.Response(200, json={"value": [
                {"@odata.type": "#microsoft.graph.user", "id": "u1"},
                {"@odata.type": "#microsoft.graph.device", "id": "d1"},
                {"@odata.type": "#microsoft.graph.group", "id": "g2"},
                {"@odata.type": "#microsoft.graph.orgContact", "id": "c1"}]})
        return httpx.Response(200, json={"value": []})

    source = GraphSource("t", "c", "s", sleep=sleeps, include_soft_deleted=False,
                         http=httpx.Client(transport=httpx.MockTransport(handler)))
    [group] = list(source.read_all())
    assert group.members == ("u1", "g2") and group.attributes == {"objectId": "g1", "displayName": "G"}
