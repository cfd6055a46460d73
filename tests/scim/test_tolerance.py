"""Replay every recorded IdP payload (tests/fixtures/idp) against the tolerance policy.

* default policy: each fixture succeeds with the recorded expectation;
* the fixture's own quirk switched off: rejected with 400 (or, where noted, a different/identical result);
* ``TolerancePolicy.strict()``: the non-RFC forms are rejected with the recorded 400 ``scimType``;
* every :data:`tolerance.QUIRKS` entry has a fixture file and a :class:`TolerancePolicy` switch.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from scimgrip.scim import tolerance
from scimgrip.scim.errors import ScimError
from scimgrip.scim.filter import parse_and_bind
from scimgrip.scim.patch import apply_patch, needs_members, parse_patch_request
from scimgrip.scim.resource import normalize_resource
from scimgrip.scim.schema import DEFAULT_REGISTRY
from scimgrip.scim.tolerance import DEFAULT_POLICY, QUIRKS, TolerancePolicy
from scimgrip.storage.base import Member, StoredResource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "idp"
ALL = sorted(p.relative_to(FIXTURES).as_posix() for p in FIXTURES.glob("*/*.json"))
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def resource_type(path: str) -> str:
    return "Group" if path.startswith("/Groups") else "User"


def replay(fx: dict[str, Any], policy: TolerancePolicy) -> dict[str, Any]:
    """Run one fixture the way the server would; returns what can be compared with ``expect``."""
    rt = resource_type(fx["path"])
    if fx["method"] == "PATCH":
        before = copy.deepcopy(fx.get("before", {}))
        member_ids = before.pop("members", None)
        ops = parse_patch_request(copy.deepcopy(fx["body"]), policy, max_operations=1000, max_members=10_000)
        load_members = needs_members(ops, DEFAULT_REGISTRY, rt)
        members = [Member(m) for m in member_ids or []] if load_members else None
        current = StoredResource("2819c223-7f76-453a-919d-413861904646", rt, before, 1, NOW, NOW,
                                 members=members)
        frozen = copy.deepcopy(current.doc)
        change = apply_patch(current, ops, DEFAULT_REGISTRY, rt, policy)
        assert current.doc == frozen, "apply_patch modified its input"
        return {"doc": change.doc, "members": {"add": list(change.members.add),
                                               "remove": list(change.members.remove),
                                               "remove_all": change.members.remove_all}}
    if fx["method"] == "POST":
        nr = normalize_resource(copy.deepcopy(fx["body"]), DEFAULT_REGISTRY, rt, policy)
        return {"doc": nr.doc, "member_list": nr.members}
    if fx["method"] == "GET":
        bound = parse_and_bind(fx["query"]["filter"], DEFAULT_REGISTRY, rt,
                               unquoted_values=policy.unquoted_filter_values)
        return {"filter": bound}
    raise AssertionError(f"unknown method {fx['method']}")


def check(result: dict[str, Any], expect: dict[str, Any], rt: str) -> None:
    doc = result.get("doc", {})
    for key, value in expect.get("attributes", {}).items():
        assert doc.get(key) == value, f"{key}: {doc.get(key)!r} != {value!r}"
    for key in expect.get("absent", []):
        assert key not in doc, f"{key} should be absent"
    for key in expect.get("no_literal_keys", []):
        assert key not in json.dumps(list(_all_keys(doc))), f"literal key {key!r} stored"
    if "members" in expect:
        assert result["members"] == expect["members"]
    if "filter" in expect:
        assert result["filter"] == parse_and_bind(expect["filter"], DEFAULT_REGISTRY, rt)


def _all_keys(obj: Any) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(k)
            out.extend(_all_keys(v))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(_all_keys(v))
    return out


def without(name: str) -> TolerancePolicy:
    return dataclasses.replace(DEFAULT_POLICY, **{name: False})


# -- inventory ---------------------------------------------------------------------------------------------------
def test_there_are_fixtures() -> None:
    assert len(ALL) >= len(QUIRKS)


@pytest.mark.parametrize("quirk", QUIRKS, ids=[q.name for q in QUIRKS])
def test_every_quirk_has_a_fixture_and_a_switch(quirk: tolerance.Quirk) -> None:
    assert (FIXTURES / quirk.fixture).is_file(), f"missing fixture {quirk.fixture}"
    assert quirk.name in {f.name for f in dataclasses.fields(TolerancePolicy)}
    assert getattr(DEFAULT_POLICY, quirk.name) is True
    assert getattr(TolerancePolicy.strict(), quirk.name) is False
    assert load(quirk.fixture)["quirk"] == quirk.name
    assert quirk.sources and quirk.summary


def test_every_switch_is_a_quirk() -> None:
    assert {f.name for f in dataclasses.fields(TolerancePolicy)} == {q.name for q in QUIRKS}


@pytest.mark.parametrize("name", ALL)
def test_fixture_shape(name: str) -> None:
    fx = load(name)
    assert isinstance(fx["source"], str) and fx["source"]
    assert fx["method"] in ("PATCH", "POST", "GET")
    assert fx["path"].startswith(("/Users", "/Groups"))
    assert isinstance(fx["expect"], dict) and fx["expect"]
    assert fx["quirk"] is None or fx["quirk"] in tolerance.QUIRKS_BY_NAME
    assert ("body" in fx) != (fx["method"] == "GET")


# -- replay --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_fixture_default_policy(name: str) -> None:
    fx = load(name)
    check(replay(fx, DEFAULT_POLICY), fx["expect"], resource_type(fx["path"]))


@pytest.mark.parametrize("name", [n for n in ALL if load(n).get("quirk")])
def test_fixture_without_its_quirk(name: str) -> None:
    fx = load(name)
    policy = without(fx["quirk"])
    mode = fx.get("without_quirk", "reject")
    rt = resource_type(fx["path"])
    if mode == "reject":
        with pytest.raises(ScimError) as info:
            replay(fx, policy)
        assert info.value.status == 400
    elif mode == "differs":
        try:
            result = replay(fx, policy)
        except ScimError as exc:
            assert exc.status == 400
        else:
            with pytest.raises(AssertionError):
                check(result, fx["expect"], rt)
    else:
        assert mode == "same"
        check(replay(fx, policy), fx["expect"], rt)


@pytest.mark.parametrize("name", ALL)
def test_fixture_strict_policy(name: str) -> None:
    fx = load(name)
    strict = fx.get("strict", "same")
    if strict == "same":
        check(replay(fx, TolerancePolicy.strict()), fx["expect"], resource_type(fx["path"]))
        return
    with pytest.raises(ScimError) as info:
        replay(fx, TolerancePolicy.strict())
    assert info.value.status == strict["status"]
    assert info.value.scim_type == strict["scimType"]


def test_docs_list_every_quirk() -> None:
    from pathlib import Path

    from scimgrip.scim.tolerance import QUIRKS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "tolerance.md").read_text()
    for quirk in QUIRKS:
        assert f"`{quirk.name}`" in doc and quirk.fixture in doc, quirk.name
