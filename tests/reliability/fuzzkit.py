"""Shared pieces of the fuzzing suites: Hypothesis strategies for SCIM filters, PATCH paths and PATCH bodies
(valid and broken), a byte-exact snapshot of a tenant's stored data, the size knob and reporting.

Size: ``SCIMGRIP_FUZZ_SCALE`` (else ``SCIMGRIP_RELIABILITY_SCALE``) multiplies every ``max_examples``
(default 1 — the CI size; e.g. 10 for a long run). Each suite adds its case count to :data:`COUNTS` and
prints a line on the terminal.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import os
import random
import sqlite3
from collections import Counter
from typing import Any

import pytest
from hypothesis import strategies as st

from scimgrip.scim.patch import PATCH_OP_URN
from scimgrip.scim.schema import DEFAULT_REGISTRY, ENTERPRISE_USER, Attribute

SCALE = float(os.environ.get("SCIMGRIP_FUZZ_SCALE") or os.environ.get("SCIMGRIP_RELIABILITY_SCALE") or "1")
COUNTS: Counter[str] = Counter()
R = DEFAULT_REGISTRY


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


def report(request: pytest.FixtureRequest, text: str) -> None:
    """A line on the terminal even with output capture on (what the suite tried and what held)."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        tr.write_line("")
        tr.write_line(f"[fuzz] {text}")


# ---------------------------------------------------------------------------------------------------------------
# stored data, byte for byte
# ---------------------------------------------------------------------------------------------------------------
_SNAPSHOT_SQL = [
    ("resources", "SELECT r.id, r.resource_type, r.user_name, r.user_name_ci, r.external_id, r.display_name, "
                  "r.display_name_ci, r.active, r.created, r.last_modified, r.version, r.doc FROM resources r "
                  "JOIN tenants t ON t.id = r.tenant_id WHERE t.name = {p} ORDER BY r.id"),
    ("resource_values", "SELECT r.id, v.attr, v.type_ci, v.value, v.value_ci FROM resource_values v "
                        "JOIN resources r ON r.pk = v.resource_pk JOIN tenants t ON t.id = v.tenant_id "
                        "WHERE t.name = {p} ORDER BY r.id, v.attr, v.value, v.type_ci"),
    ("group_members", "SELECT m.group_id, m.member_id, m.member_type FROM group_members m "
                      "JOIN tenants t ON t.id = m.tenant_id WHERE t.name = {p} ORDER BY m.group_id, m.member_id"),
]


class Snapshotter:
    """Reads a tenant's resources, value rows and memberships straight from the database (one connection)."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.pg: Any = None
        self.lite: sqlite3.Connection | None = None
        if database_url.startswith("sqlite"):
            self.lite = sqlite3.connect(database_url.split("///", 1)[1], check_same_thread=False)
        else:
            import psycopg

            self.pg = psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"),
                                      autocommit=True)

    def __call__(self, tenant: str) -> bytes:
        out: list[Any] = []
        for name, sql in _SNAPSHOT_SQL:
            if self.lite is not None:
                rows = self.lite.execute(sql.format(p="?"), (tenant,)).fetchall()
            else:
                rows = self.pg.execute(sql.format(p="%s"), (tenant,)).fetchall()
            out.append((name, [tuple(str(c) for c in r) for r in rows]))
        return json.dumps(out).encode()

    def close(self) -> None:
        if self.lite is not None:
            self.lite.close()
        if self.pg is not None:
            self.pg.close()


# ---------------------------------------------------------------------------------------------------------------
# Generators. Hypothesis draws a 64-bit seed and the generators below build the input from a ``random.Random``
# with that seed: composite strategies cost 7-30 ms per case (measured), this well under 1 ms, so the suites
# reach their case counts inside the CI budget. A failure prints its seed and replays exactly (no shrinking).
# ---------------------------------------------------------------------------------------------------------------
Rnd = random.Random
_NOISE = list('abeqnotrpswcglu ()[]".:-1_$\\\'\x00é{}\t,=<>*')
_UNICODE = "aZ09 _-.@+\"\\/é漢\u200b\U0001f600\x00\n\t\ud7ff"


def rtext(rnd: Rnd, max_size: int = 12, alphabet: str = _UNICODE) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, max_size)))


@functools.cache
def leaf_paths(resource_type: str) -> list[tuple[str, Attribute, Attribute | None]]:
    """Every filterable leaf: (path text, definition, parent) — top-level simple attributes, ``attr.sub`` of
    complex ones, and URN-qualified extension attributes."""
    out: list[tuple[str, Attribute, Attribute | None]] = []
    for schema in R.schemas_for(resource_type):
        core = schema.id == R.resource_type(resource_type).schema
        for attr in R.attributes_of(resource_type, schema.id):
            prefix = "" if core else f"{schema.id}:"
            if attr.type == "complex":
                for sub in attr.sub_attributes:
                    out.append((f"{prefix}{attr.name}.{sub.name}", sub, attr))
            else:
                out.append((f"{prefix}{attr.name}", attr, None))
    return out


@functools.cache
def multi_complex(resource_type: str) -> list[Attribute]:
    core = R.resource_type(resource_type).schema
    return [a for a in R.attributes_of(resource_type, core) if a.type == "complex" and a.multi_valued]


def recase(rnd: Rnd, text: str) -> str:
    """Attribute names and operators are case-insensitive (RFC 7643 §2.1)."""
    return rnd.choice([text, text, text.lower(), text.upper(), text[:1].upper() + text[1:]])


def literal(rnd: Rnd, attr: Attribute) -> str:
    t = attr.type
    if t == "boolean":
        return rnd.choice(["true", "false", "True", "FALSE"])
    if t == "integer":
        return str(rnd.randint(-10**6, 10**6))
    if t == "decimal":
        return rnd.choice([str(rnd.randint(-1000, 1000)), f"{rnd.uniform(-1000, 1000):.3f}", "1e3", "-0.5E-2"])
    if t == "dateTime":
        d = dt.datetime(1990, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rnd.randint(0, 3_500_000_000))
        return json.dumps(rnd.choice([d.isoformat().replace("+00:00", "Z"), d.isoformat(), d.strftime("%Y-%m-%d")]))
    if t == "binary":
        return json.dumps(base64.b64encode(rnd.randbytes(rnd.randint(0, 9))).decode())
    return json.dumps(rtext(rnd, alphabet=_UNICODE.replace("\x00", "")), ensure_ascii=rnd.random() < 0.5)


def ops_for(attr: Attribute) -> list[str]:
    if attr.type in ("boolean", "binary"):
        return ["eq", "ne"]
    if attr.type in ("string", "reference"):
        return ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"]
    return ["eq", "ne", "gt", "ge", "lt", "le"]


def gen_attr_expr(rnd: Rnd, resource_type: str) -> str:
    path, attr, _parent = rnd.choice(leaf_paths(resource_type))
    if rnd.random() < 0.15:
        return f"{recase(rnd, path)} {recase(rnd, 'pr')}"
    op = rnd.choice(ops_for(attr))
    if op in ("eq", "ne") and rnd.random() < 0.1:
        return f"{path} {op} null"
    return f"{recase(rnd, path)} {recase(rnd, op)} {literal(rnd, attr)}"


def gen_value_path(rnd: Rnd, resource_type: str) -> str:
    parent = rnd.choice(multi_complex(resource_type))
    subs = [s for s in parent.sub_attributes if s.type != "complex"]

    def rel() -> str:
        sub = rnd.choice(subs)
        if rnd.random() < 0.2:
            return f"{sub.name} pr"
        return f"{sub.name} {rnd.choice(ops_for(sub))} {literal(rnd, sub)}"

    inner = rel()
    for _ in range(rnd.randint(0, 2)):
        inner = f"{inner} {rnd.choice(['and', 'or'])} {rel()}"
    if rnd.random() < 0.2:
        inner = f"not ({inner})"
    return f"{recase(rnd, parent.name)}[{inner}]"


def gen_valid_filter(rnd: Rnd, resource_type: str, depth: int = 0) -> str:
    """A syntactically and semantically valid filter for ``resource_type``."""
    k = rnd.random() if depth < 4 else 0.0
    if k < 0.45:
        return gen_attr_expr(rnd, resource_type) if rnd.random() < 0.75 else gen_value_path(rnd, resource_type)
    if k < 0.75:
        joiner = rnd.choice(["and", "or", "AND", "Or"])
        left, right = gen_valid_filter(rnd, resource_type, depth + 1), gen_valid_filter(rnd, resource_type, depth + 1)
        return f"{left} {joiner} {right}"
    if k < 0.9:
        return f"({gen_valid_filter(rnd, resource_type, depth + 1)})"
    return f"not ({gen_valid_filter(rnd, resource_type, depth + 1)})"


def gen_broken_filter(rnd: Rnd, resource_type: str) -> str:
    """A valid filter damaged: characters inserted, deleted; truncated; or noise."""
    kind = rnd.randint(0, 4)
    if kind == 0:
        return "".join(rnd.choice(_NOISE) for _ in range(rnd.randint(0, 80)))
    text = gen_valid_filter(rnd, resource_type)
    if kind == 1:
        return text[:rnd.randint(0, len(text))]
    for _ in range(rnd.randint(1, 3)):
        pos = rnd.randint(0, len(text))
        if kind == 2:
            text = text[:pos] + rnd.choice(list('()[]"\\ .:x0') + ["and", "not", "pr", "eq", "urn:", "'"]) + text[pos:]
        elif kind == 3:
            text = text[:pos] + text[pos + 1:]
        else:
            text = text[:pos] + rtext(rnd, 3) + text[pos:]
    return text


# ---------------------------------------------------------------------------------------------------------------
# PATCH paths and bodies (RFC 7644 §3.5.2)
# ---------------------------------------------------------------------------------------------------------------
@functools.cache
def patch_paths(resource_type: str) -> list[str]:
    """Every path shape: ``attr``, ``attr.sub``, URN-qualified, the extension URN itself."""
    out: list[str] = []
    core = R.resource_type(resource_type).schema
    for schema in R.schemas_for(resource_type):
        prefix = "" if schema.id == core else f"{schema.id}:"
        if schema.id != core:
            out.append(schema.id)
        for attr in R.attributes_of(resource_type, schema.id):
            out.append(f"{prefix}{attr.name}")
            for sub in attr.sub_attributes:
                out.append(f"{prefix}{attr.name}.{sub.name}")
        if schema.id == core:
            out.extend(f"{core}:{a.name}" for a in R.attributes_of(resource_type, core))
    return out


def gen_valid_patch_path(rnd: Rnd, resource_type: str) -> str:
    if rnd.random() < 0.4:
        parent = rnd.choice(multi_complex(resource_type))
        subs = [s for s in parent.sub_attributes if s.type != "complex"]
        sub = rnd.choice(subs)
        flt = f"{sub.name} {rnd.choice(ops_for(sub))} {literal(rnd, sub)}"
        if rnd.random() < 0.3:
            flt = f"{flt} {rnd.choice(['and', 'or'])} {rnd.choice(subs).name} pr"
        after = f".{rnd.choice(subs).name}" if rnd.random() < 0.5 else ""
        return f"{parent.name}[{flt}]{after}"
    return recase(rnd, rnd.choice(patch_paths(resource_type)))


def gen_broken_patch_path(rnd: Rnd, resource_type: str) -> str:
    text = gen_valid_patch_path(rnd, resource_type)
    kind = rnd.randint(0, 3)
    if kind == 0:
        return "".join(rnd.choice('abemsvlu.[]":= ()\\$0\x00') for _ in range(rnd.randint(0, 40)))
    pos = rnd.randint(0, len(text))
    if kind == 1:
        return text[:pos]
    if kind == 2:
        return text[:pos] + rnd.choice(list('[]."\\ :$') + ["urn:x:", "[", "].", "..", "nosuch"]) + text[pos:]
    return text[:pos] + text[pos + 1:]


_KEYS = ["value", "type", "primary", "display", "$ref", "givenName", "familyName", "id", "meta", "members",
         "userName", "displayName", "active", "emails", "name", "name.givenName", "externalId", ENTERPRISE_USER,
         f"{ENTERPRISE_USER}:manager", "manager", "schemas", "x", "VALUE", "emails[type eq \"work\"].value"]


def gen_json(rnd: Rnd, depth: int = 0) -> Any:
    k = rnd.random() if depth < 3 else rnd.random() * 0.6
    if k < 0.6:
        return rnd.choice([None, True, False, 0, -1, 2**70, 1.5, -0.0, 1e308, "", "True", "False", "work", "home",
                           "a@example.com", "1990-01-01T00:00:00Z", "aGk=", rtext(rnd), rnd.randint(-5, 5)])
    if k < 0.8:
        return [gen_json(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return {rnd.choice(_KEYS) if rnd.random() < 0.8 else rtext(rnd, 6): gen_json(rnd, depth + 1)
            for _ in range(rnd.randint(0, 4))}


def gen_value(rnd: Rnd, attr: Attribute | None, ids: tuple[str, ...]) -> Any:
    """A value that fits ``attr`` (usually) or any JSON (sometimes)."""
    if attr is None or rnd.random() < 0.15:
        return gen_json(rnd)

    def scalar(a: Attribute) -> Any:
        t = a.type
        if a.name == "value" and ids and rnd.random() < 0.7:
            return rnd.choice(ids)
        if t == "boolean":
            return rnd.choice([True, False, "True", "false"])
        if t == "integer":
            return rnd.randint(-100, 100)
        if t == "decimal":
            return rnd.choice([rnd.uniform(-1e6, 1e6), 3, 0])
        if t == "dateTime":
            return rnd.choice(["2025-01-01T00:00:00Z", "2025-06-30T12:00:00.123+02:00", "2025-01-01"])
        if t == "binary":
            return rnd.choice(["aGk=", "", "AA=="])
        if a.canonical_values and rnd.random() < 0.7:
            return rnd.choice([*a.canonical_values, "Work"])
        return rtext(rnd, 10) or "x"

    def one(a: Attribute) -> Any:
        if a.type != "complex":
            return scalar(a)
        subs = [s for s in a.sub_attributes if s.mutability != "readOnly"]
        return {s.name: scalar(s) for s in rnd.sample(subs, rnd.randint(0, len(subs)))}

    if attr.multi_valued and rnd.random() < 0.85:
        return [one(attr) for _ in range(rnd.randint(0, 3))]
    return one(attr)


def gen_patch_operation(rnd: Rnd, resource_type: str, ids: tuple[str, ...]) -> dict[str, Any]:
    """One mostly-valid operation: a path from the schema and a value that fits it, or a path-less object."""
    from scimgrip.scim.paths import parse_patch_path

    op = rnd.choice(["add", "replace", "remove", "Add", "Replace", "Remove"])
    core = R.resource_type(resource_type).schema
    if rnd.random() < 0.25 and op.lower() != "remove":
        attrs = [a for a in R.attributes_of(resource_type, core) if a.mutability != "readOnly"]
        chosen = rnd.sample(attrs, rnd.randint(1, 3))
        value: dict[str, Any] = {a.name: gen_value(rnd, a, ids) for a in chosen}
        if resource_type == "User" and rnd.random() < 0.3:
            value[ENTERPRISE_USER] = {"department": rtext(rnd, 6), "manager": {"value": rnd.choice(ids or ("m",))}}
        return {"op": op, "value": value}
    path = gen_valid_patch_path(rnd, resource_type)
    try:
        target: Attribute | None = parse_patch_path(path, R, resource_type).target
    except Exception:  # noqa: BLE001 - e.g. the bare extension URN: any value
        target = None
    out: dict[str, Any] = {"op": op, "path": path}
    if op.lower() != "remove" or rnd.random() < 0.15:
        v = gen_value(rnd, target, ids)
        if "[" in path and path.endswith("]") and isinstance(v, list) and v and rnd.random() < 0.5:
            v = v[0]  # attr[filter] takes one element
        out["value"] = v
    return out


def gen_valid_patch_body(rnd: Rnd, resource_type: str, ids: tuple[str, ...]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP_URN],
            "Operations": [gen_patch_operation(rnd, resource_type, ids) for _ in range(rnd.randint(1, 4))]}


def gen_broken_patch_body(rnd: Rnd, resource_type: str, ids: tuple[str, ...]) -> Any:
    """Structurally broken PATCH messages, and operations with a broken piece."""
    kind = rnd.randint(0, 6)
    if kind == 0:
        return gen_json(rnd)
    body = gen_valid_patch_body(rnd, resource_type, ids)
    op = rnd.choice(body["Operations"])
    if kind == 1:
        body["schemas"] = rnd.choice([[], ["urn:x"], PATCH_OP_URN, None, [1]])
    elif kind == 2:
        body["Operations"] = rnd.choice([[], {}, None, "add", [None], [[]], [{}]])
    elif kind == 3:
        op["path"] = gen_broken_patch_path(rnd, resource_type) if rnd.random() < 0.8 else gen_json(rnd)
    elif kind == 4:
        op["op"] = rnd.choice(["bogus", "", "ADD ", None, 1, "move", "copy", "test", ["add"]])
    elif kind == 5:
        op["value"] = gen_json(rnd)
    else:
        op[rnd.choice(["from", "Path", "VALUE", "x"])] = gen_json(rnd)
    return body


# strategies -----------------------------------------------------------------------------------------------------
# one 64-bit seed per case: the falsifying example shows the seed, which replays the input exactly
RANDOMS = st.integers(0, 2**64 - 1).map(random.Random)


def valid_filter(resource_type: str) -> st.SearchStrategy[str]:
    return RANDOMS.map(lambda r: gen_valid_filter(r, resource_type))


def broken_filter(resource_type: str) -> st.SearchStrategy[str]:
    return RANDOMS.map(lambda r: gen_broken_filter(r, resource_type))


def valid_patch_path(resource_type: str) -> st.SearchStrategy[str]:
    return RANDOMS.map(lambda r: gen_valid_patch_path(r, resource_type))


def broken_patch_path(resource_type: str) -> st.SearchStrategy[str]:
    return RANDOMS.map(lambda r: gen_broken_patch_path(r, resource_type))


def valid_patch_body(resource_type: str, ids: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return RANDOMS.map(lambda r: gen_valid_patch_body(r, resource_type, ids))


def broken_patch_body(resource_type: str, ids: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return RANDOMS.map(lambda r: gen_broken_patch_body(r, resource_type, ids))


def any_json() -> st.SearchStrategy[Any]:
    return RANDOMS.map(gen_json)
