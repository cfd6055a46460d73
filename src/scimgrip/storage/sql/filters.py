"""Compile a bound SCIM filter AST (``scim.filter``) into a SQLAlchemy Core WHERE clause.

Hand-written rather than taken from a library because the off-the-shelf translators get SCIM semantics wrong
(stack-notes §6.1: ``active eq true`` binds a string, LIKE wildcards are not escaped, ``UPPER(col)`` defeats
indexes) and because this one has to know our schema: case-insensitive attributes compare the pre-lowered
``*_ci`` columns with a literal lowered in Python, so indexes are used; multi-valued attributes become
``IN (SELECT … FROM resource_values/group_members …)`` subqueries.

The result is ``(expression, exact)``. When ``exact`` is False the expression is a *superset* prefilter and the
caller must evaluate :func:`scimgrip.scim.filter.evaluate` on the candidates. Every leaf is written to be
two-valued (never SQL NULL), so ``NOT`` over an exact child stays exact. Every value is a bound parameter.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select, true

from scimgrip.scim.filter import And, AttrPath, Compare, Filter, Not, Or, Present, ValuePath, parse_datetime
from scimgrip.scim.schema import CORE_GROUP, CORE_USER
from scimgrip.storage.sql.tables import group_members, resource_values, resources

CORE_URNS = {"User": CORE_USER, "Group": CORE_GROUP}
LIKE_ESCAPE = "!"

Expr = ColumnElement[bool]
Result = tuple[Expr, bool]


def fold(text: str) -> str:
    """The case-insensitive form stored in ``*_ci`` columns: NFC, then ``str.lower``."""
    return unicodedata.normalize("NFC", text).lower()


def as_text(value: Any) -> str | None:
    """A scalar as the in-memory evaluator sees it when compared with a string (None for absent/complex)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        return str(value)
    return str(value)


def like_escape(text: str) -> str:
    return text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%").replace(
        "_", LIKE_ESCAPE + "_")


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix`` (code-point order)."""
    if not prefix:
        return None
    n = ord(prefix[-1]) + 1
    if 0xD800 <= n <= 0xDFFF:
        n = 0xE000
    if n > 0x10FFFF:
        return None
    return prefix[:-1] + chr(n)


@dataclass(frozen=True)
class FilterContext:
    tenant_id: int
    resource_type: str
    dialect: str                      # "sqlite" or "postgresql"

    @property
    def core_urn(self) -> str:
        return CORE_URNS.get(self.resource_type, "")


# column kinds
CI = "ci"                 # pre-folded column; fold the literal
EXACT = "exact"           # case-exact column; literal as is
LOWER = "lower"           # column known to be lower-case (our ids); lower the literal
CI_SUPERSET = "ci_superset"  # case-exact attribute but only a folded column: superset for eq/co/sw/ew
BOOL = "bool"
DATETIME = "datetime"

ColumnSpec = tuple[Any, str]


@dataclass(frozen=True)
class _Elements:
    """The rows holding the elements of one multi-valued attribute and how to test "some element matches"."""

    columns: dict[str, ColumnSpec]            # lower-case sub-attribute name -> (column, kind)
    any_in: Callable[[Expr], Expr]            # resource key IN (SELECT key FROM rows WHERE cond): index driven
    any_exists: Callable[[Expr], Expr]        # EXISTS (correlated): for pr / eq null


def _elements_for(parent: str, ctx: FilterContext) -> _Elements | None:
    gm = group_members
    rv = resource_values
    t = ctx.tenant_id
    low = parent.lower()
    if low == "members":
        if ctx.resource_type != "Group":
            return None
        return _Elements(
            {"value": (gm.c.member_id, LOWER), "type": (func.lower(gm.c.member_type), LOWER)},
            lambda c: resources.c.id.in_(select(gm.c.group_id).where(gm.c.tenant_id == t, c)),
            lambda c: exists().where(gm.c.tenant_id == t, gm.c.group_id == resources.c.id, c),
        )
    if low == "groups":
        if ctx.resource_type != "User":
            return None
        return _Elements(
            {"value": (gm.c.group_id, LOWER)},
            lambda c: resources.c.id.in_(select(gm.c.member_id).where(gm.c.tenant_id == t, c)),
            lambda c: exists().where(gm.c.tenant_id == t, gm.c.member_id == resources.c.id, c),
        )
    return _Elements(
        {"value": (None, ""), "type": (None, "")},   # resolved per definition in _element_column
        lambda c: resources.c.pk.in_(select(rv.c.resource_pk).where(rv.c.tenant_id == t, rv.c.attr == low, c)),
        lambda c: exists().where(rv.c.resource_pk == resources.c.pk, rv.c.attr == low, c),
    )


def _element_column(elems: _Elements, path: AttrPath, sub: str) -> ColumnSpec | None:
    spec = elems.columns.get(sub.lower())
    if spec is None:
        return None
    col, kind = spec
    if col is not None:
        return spec
    d = path.definition
    if d is None or d.type not in ("string", "reference", "binary"):
        return None
    if sub.lower() == "value":
        return (resource_values.c.value, EXACT) if d.case_exact else (resource_values.c.value_ci, CI)
    return (resource_values.c.type_ci, CI_SUPERSET if d.case_exact else CI)


def _top_column(path: AttrPath, ctx: FilterContext) -> ColumnSpec | None:
    d = path.definition
    if d is None or path.urn != ctx.core_urn:
        return None
    r = resources.c
    if path.sub is None:
        name = path.attr
        if name == "id":
            return (r.id, EXACT) if d.case_exact else None
        if name == "externalId":
            return (r.external_id, EXACT) if d.case_exact else None
        if name == "userName" and ctx.resource_type == "User":
            return (r.user_name, EXACT) if d.case_exact else (r.user_name_ci, CI)
        if name == "displayName":
            return (r.display_name, EXACT) if d.case_exact else (r.display_name_ci, CI)
        if name == "active" and ctx.resource_type == "User" and d.type == "boolean":
            return r.active, BOOL
        return None
    if path.attr == "meta":
        if path.sub == "created":
            return r.created, DATETIME
        if path.sub == "lastModified":
            return r.last_modified, DATETIME
        if path.sub == "resourceType":
            return r.resource_type, EXACT
    return None


# ---------------------------------------------------------------------------------------------------------------
# Row-level conditions (one value per row)
# ---------------------------------------------------------------------------------------------------------------
def _row(col: Any, kind: str, op: str, value: Any, dialect: str) -> Result:
    """``col op value`` for one row, two-valued; ``op`` is a positive operator or ``pr``."""
    if kind == BOOL:
        if op == "pr":
            return col.is_not(None), True
        if op != "eq":
            return true(), False          # rejected by bind(); stay safe
        if not isinstance(value, bool):
            return false(), True          # the evaluator finds such values incomparable
        return _not_null(col, col == value), True
    if kind == DATETIME:
        if op == "pr":
            return col.is_not(None), True
        when = parse_datetime(value) if isinstance(value, str) else None
        if when is None:
            return false(), True
        ops = {"eq": col.__eq__, "gt": col.__gt__, "ge": col.__ge__, "lt": col.__lt__, "le": col.__le__}
        if op not in ops:
            return true(), False
        return _not_null(col, ops[op](when.astimezone(dt.UTC))), True
    # strings
    if op == "pr":
        return _not_null(col, col != ""), True
    if isinstance(value, bool) or value is None:
        return false(), True
    text = str(value)
    if kind in (CI, CI_SUPERSET):
        text = fold(text)
    elif kind == LOWER:
        text = text.lower()
    exact = kind != CI_SUPERSET
    if kind == CI_SUPERSET and op not in ("eq", "co", "sw", "ew"):
        return true(), False
    cond: Expr
    if op == "eq":
        cond = col == text
    elif op in ("gt", "ge", "lt", "le"):
        cond = {"gt": col > text, "ge": col >= text, "lt": col < text, "le": col <= text}[op]
    elif op == "co":
        cond = col.like("%" + like_escape(text) + "%", escape=LIKE_ESCAPE)
        if dialect == "sqlite" and kind == EXACT and text:
            cond = and_(cond, func.instr(col, text) > 0)      # SQLite LIKE folds ASCII case
    elif op == "sw":
        upper = prefix_upper_bound(text)
        if upper is not None:
            cond = and_(col >= text, col < upper)
        else:
            cond = col.like(like_escape(text) + "%", escape=LIKE_ESCAPE)
            if dialect == "sqlite" and kind == EXACT and text:
                cond = and_(cond, func.substr(col, 1, len(text)) == text)
    elif op == "ew":
        cond = col.like("%" + like_escape(text), escape=LIKE_ESCAPE)
        if dialect == "sqlite" and kind == EXACT and text:
            cond = and_(cond, func.substr(col, -len(text)) == text)
    else:
        return true(), False
    return _not_null(col, cond), exact


def _not_null(col: Any, cond: Expr) -> Expr:
    """``col IS NOT NULL AND cond``, so the leaf is two-valued; skipped for NOT NULL columns."""
    if getattr(col, "nullable", True) is False:
        return cond
    return and_(col.is_not(None), cond)


def _leaf(node: Compare | Present, col: Any, kind: str, dialect: str,
          wrap_in: Callable[[Expr], Expr], wrap_exists: Callable[[Expr], Expr]) -> Result:
    """Apply the RFC semantics "some value satisfies" (``ne``: no value equals) over ``wrap``."""
    if isinstance(node, Present):
        cond, exact = _row(col, kind, "pr", None, dialect)
        return wrap_exists(cond), exact
    if node.value is None:
        cond, exact = _row(col, kind, "pr", None, dialect)
        if node.op == "eq":
            return (not_(wrap_exists(cond)), True) if exact else (true(), False)
        return wrap_exists(cond), exact
    if node.op == "ne":
        cond, exact = _row(col, kind, "eq", node.value, dialect)
        return (not_(wrap_in(cond)), True) if exact else (true(), False)
    cond, exact = _row(col, kind, node.op, node.value, dialect)
    return wrap_in(cond), exact


def _identity(e: Expr) -> Expr:
    return e


# ---------------------------------------------------------------------------------------------------------------
# Tree
# ---------------------------------------------------------------------------------------------------------------
def compile_filter(node: Filter, ctx: FilterContext) -> Result:
    """``(where-clause over resources, exact)`` for a bound filter; see the module docstring."""
    return _compile(node, ctx, None)


def _compile(node: Filter, ctx: FilterContext, elems: _Elements | None) -> Result:
    if isinstance(node, And):
        le, lx = _compile(node.left, ctx, elems)
        re_, rx = _compile(node.right, ctx, elems)
        return and_(le, re_), lx and rx
    if isinstance(node, Or):
        le, lx = _compile(node.left, ctx, elems)
        re_, rx = _compile(node.right, ctx, elems)
        return or_(le, re_), lx and rx          # a union of supersets is a superset
    if isinstance(node, Not):
        inner, ix = _compile(node.expr, ctx, elems)
        return (not_(inner), True) if ix else (true(), False)
    if isinstance(node, ValuePath):
        if elems is not None or node.path.urn != ctx.core_urn:
            return true(), False
        sub_elems = _elements_for(node.path.attr, ctx)
        if sub_elems is None:
            return true(), False
        cond, exact = _compile(node.filter, ctx, sub_elems)
        return sub_elems.any_in(cond), exact
    path = node.path
    if elems is not None:
        # relative path inside attr[...]: one row per element
        spec = _element_column(elems, path, path.attr)
        if spec is None:
            return true(), False
        return _leaf(node, spec[0], spec[1], ctx.dialect, _identity, _identity)
    spec = _top_column(path, ctx)
    if spec is not None:
        return _leaf(node, spec[0], spec[1], ctx.dialect, _identity, _identity)
    parent = path.parent
    if (parent is not None and parent.multi_valued and parent.type == "complex" and path.sub is not None
            and path.urn == ctx.core_urn):
        multi = _elements_for(path.attr, ctx)
        if multi is not None:
            mspec = _element_column(multi, path, path.sub)
            if mspec is not None:
                return _leaf(node, mspec[0], mspec[1], ctx.dialect, multi.any_in, multi.any_exists)
    return true(), False


def mentions(node: Filter | None, attr: str) -> bool:
    """Does the filter refer to top-level attribute ``attr`` (e.g. ``members``) anywhere?"""
    if node is None:
        return False
    if isinstance(node, And | Or):
        return mentions(node.left, attr) or mentions(node.right, attr)
    if isinstance(node, Not):
        return mentions(node.expr, attr)
    return node.path.attr.lower() == attr.lower()


PROBE_COLUMNS = frozenset({"user_name_ci", "user_name", "external_id", "display_name_ci", "display_name", "id"})


@dataclass(frozen=True)
class EqualityProbe:
    """A filter that is one equality on an indexed column, answered by ``rawsql`` without Core: either
    ``column = value`` on ``resources`` or an element of ``attr`` in ``resource_values`` with
    ``value_column = value`` (and ``type_ci = type_ci`` when given). ``value`` is already folded as needed."""

    value: str
    column: str | None = None
    attr: str | None = None
    value_column: str | None = None
    type_ci: str | None = None


def _string_eq(node: Filter) -> Compare | None:
    if isinstance(node, Compare) and node.op == "eq" and isinstance(node.value, str):
        return node
    return None


def _folded(kind: str, value: str) -> str | None:
    if kind == CI:
        return fold(value)
    if kind == EXACT:
        return value
    return None     # LOWER, CI_SUPERSET, … : the general path


def equality_probe(node: Filter, ctx: FilterContext) -> EqualityProbe | None:
    """The :class:`EqualityProbe` equivalent to ``node`` (same rows as :func:`compile_filter`), or None."""
    cmp = _string_eq(node)
    if cmp is not None:
        spec = _top_column(cmp.path, ctx)
        if spec is not None:
            value = _folded(spec[1], cmp.value)  # type: ignore[arg-type]
            return EqualityProbe(value, column=spec[0].name) \
                if value is not None and spec[0].name in PROBE_COLUMNS else None
        path = cmp.path
        parent = path.parent
        if (parent is None or not parent.multi_valued or parent.type != "complex" or path.sub is None
                or path.urn != ctx.core_urn or path.attr.lower() in ("members", "groups")):
            return None
        elems = _elements_for(path.attr, ctx)
        vspec = _element_column(elems, path, path.sub) if elems is not None else None
        if vspec is None or path.sub.lower() != "value":
            return None
        value = _folded(vspec[1], cmp.value)  # type: ignore[arg-type]
        return EqualityProbe(value, attr=path.attr.lower(), value_column=vspec[0].name) \
            if value is not None else None
    # attr[type eq "x" and value eq "y"] (either order)
    if not isinstance(node, ValuePath) or node.path.urn != ctx.core_urn or \
            node.path.attr.lower() in ("members", "groups") or not isinstance(node.filter, And):
        return None
    elems = _elements_for(node.path.attr, ctx)
    if elems is None:
        return None
    parts = [_string_eq(node.filter.left), _string_eq(node.filter.right)]
    by_name = {p.path.attr.lower(): p for p in parts if p is not None}
    if set(by_name) != {"type", "value"}:
        return None
    tspec = _element_column(elems, by_name["type"].path, "type")
    vspec = _element_column(elems, by_name["value"].path, "value")
    if tspec is None or vspec is None:
        return None
    type_ci = _folded(tspec[1], by_name["type"].value)  # type: ignore[arg-type]
    value = _folded(vspec[1], by_name["value"].value)  # type: ignore[arg-type]
    if type_ci is None or value is None:
        return None
    return EqualityProbe(value, attr=node.path.attr.lower(), value_column=vspec[0].name, type_ci=type_ci)
