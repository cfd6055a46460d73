"""SCIM filter grammar (RFC 7644 §3.4.2.2): parser, AST, binding to a schema, in-memory evaluation.

Hand-written recursive-descent parser rather than a library: scim2-filter-parser answers ``active eq true``
and LIKE wildcards wrongly (stack-notes §6.1) and lark-based scim2-models parses at ~13k filters/s; this
parser is a few hundred lines, has no dependency, bounds length, depth and node count (→ ``invalidFilter``),
and produces the one AST that both :func:`evaluate` and the SQL compiler (``storage.sql.filters``) consume.

Grammar (RFC 7644 Figure 1), precedence ``not`` > ``and`` > ``or``::

    FILTER    = attrExp / logExp / valuePath / *1"not" "(" FILTER ")" / "(" FILTER ")"
    valuePath = attrPath "[" valFilter "]"            ; Entra adds: attrPath "[" valFilter "]" "." sub op value
    attrExp   = (attrPath SP "pr") / (attrPath SP compareOp SP compValue)
    attrPath  = [URI ":"] ATTRNAME *1subAttr
    compValue = false / null / true / number / string

Entra's ``emails[type eq "work"].value eq "x"`` is parsed as ``emails[type eq "work" and value eq "x"]``,
which is its meaning: some element has both.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

from scimgrip.scim.errors import InvalidFilter
from scimgrip.scim.schema import Attribute, SchemaRegistry

MAX_FILTER_LENGTH = 4096
MAX_FILTER_DEPTH = 24
MAX_FILTER_NODES = 256

COMPARE_OPS = frozenset({"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"})
ORDER_OPS = frozenset({"gt", "ge", "lt", "le"})
SUBSTRING_OPS = frozenset({"co", "sw", "ew"})

Literal: TypeAlias = str | bool | int | Decimal | None


# ---------------------------------------------------------------------------------------------------------------
# AST
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttrPath:
    """``[urn:]attr[.sub]``. After :func:`bind`: canonical names and the attribute definition attached.

    ``urn`` is the canonical schema URN after binding (empty string before binding when none was written).
    Inside a value filter (``emails[type eq "work"]``) paths are relative: ``attr`` names the sub-attribute.
    """

    urn: str
    attr: str
    sub: str | None = None
    definition: Attribute | None = field(default=None, compare=False)
    parent: Attribute | None = field(default=None, compare=False)

    def dotted(self) -> str:
        return f"{self.attr}.{self.sub}" if self.sub else self.attr

    def __str__(self) -> str:
        return f"{self.urn}:{self.dotted()}" if self.urn else self.dotted()


@dataclass(frozen=True)
class Compare:
    path: AttrPath
    op: str
    value: Literal


@dataclass(frozen=True)
class Present:
    path: AttrPath


@dataclass(frozen=True)
class And:
    left: Filter
    right: Filter


@dataclass(frozen=True)
class Or:
    left: Filter
    right: Filter


@dataclass(frozen=True)
class Not:
    expr: Filter


@dataclass(frozen=True)
class ValuePath:
    """``attr[filter]``: some element of multi-valued complex ``attr`` satisfies ``filter`` (relative paths)."""

    path: AttrPath
    filter: Filter


Filter: TypeAlias = Compare | Present | And | Or | Not | ValuePath


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<lbrack>\[)
  | (?P<rbrack>\])
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<word>[A-Za-z0-9_:.$+\-@/#]+)
    """,
    re.VERBOSE,
)
_ATTRNAME = re.compile(r"^\$?[A-Za-z][A-Za-z0-9_\-$]*$")
_NUMBER = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$")


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InvalidFilter(f"unexpected character {text[pos]!r} at position {pos}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    return out


def parse_attr_path(text: str, *, relative: bool = False) -> AttrPath:
    """Parse ``[URI:]ATTRNAME[.subAttr]`` (RFC 7644 §3.10 attrPath)."""
    if not text:
        raise InvalidFilter("empty attribute path")
    urn = ""
    rest = text
    if text.lower().startswith("urn:"):
        if relative:
            raise InvalidFilter(f"URN attribute {text!r} is not allowed inside a value filter")
        idx = text.rfind(":")
        urn, rest = text[:idx], text[idx + 1:]
        if not rest:
            raise InvalidFilter(f"attribute path {text!r} ends with ':'")
    parts = rest.split(".")
    if len(parts) > 2 or not all(_ATTRNAME.match(p) for p in parts):
        raise InvalidFilter(f"invalid attribute path {text!r}")
    return AttrPath(urn, parts[0], parts[1] if len(parts) == 2 else None)


class _Parser:
    def __init__(self, text: str, *, unquoted_values: bool) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.nodes = 0
        self.unquoted = unquoted_values

    # helpers
    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise InvalidFilter("unexpected end of filter")
        self.i += 1
        return tok

    def expect(self, kind: str) -> _Tok:
        tok = self.take()
        if tok.kind != kind:
            raise InvalidFilter(f"expected {kind} at position {tok.pos}, found {tok.text!r}")
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text.lower() == word

    def node(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_FILTER_NODES:
            raise InvalidFilter(f"filter has more than {MAX_FILTER_NODES} expressions")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_FILTER_DEPTH:
            raise InvalidFilter(f"filter is nested deeper than {MAX_FILTER_DEPTH} levels")

    # grammar
    def parse(self) -> Filter:
        if not self.toks:
            raise InvalidFilter("empty filter")
        expr = self.or_expr(relative=False)
        tok = self.peek()
        if tok is not None:
            raise InvalidFilter(f"unexpected {tok.text!r} at position {tok.pos}")
        return expr

    def or_expr(self, relative: bool) -> Filter:
        left = self.and_expr(relative)
        while self.is_word("or"):
            self.take()
            self.node()
            left = Or(left, self.and_expr(relative))
        return left

    def and_expr(self, relative: bool) -> Filter:
        left = self.unary(relative)
        while self.is_word("and"):
            self.take()
            self.node()
            left = And(left, self.unary(relative))
        return left

    def unary(self, relative: bool) -> Filter:
        tok = self.peek()
        if tok is None:
            raise InvalidFilter("unexpected end of filter")
        if tok.kind == "word" and tok.text.lower() == "not":
            nxt = self.toks[self.i + 1] if self.i + 1 < len(self.toks) else None
            if nxt is not None and nxt.kind == "lparen":
                self.take()
                self.node()
                self.enter()
                self.take()
                inner = self.or_expr(relative)
                self.expect("rparen")
                self.depth -= 1
                return Not(inner)
        if tok.kind == "lparen":
            self.take()
            self.enter()
            inner = self.or_expr(relative)
            self.expect("rparen")
            self.depth -= 1
            return inner
        return self.attr_exp(relative)

    def attr_exp(self, relative: bool) -> Filter:
        tok = self.take()
        if tok.kind != "word":
            raise InvalidFilter(f"expected an attribute at position {tok.pos}, found {tok.text!r}")
        self.node()
        nxt = self.peek()
        if nxt is not None and nxt.kind == "lbrack":
            if relative:
                raise InvalidFilter("value filters cannot be nested")
            path = parse_attr_path(tok.text)
            if path.sub is not None:
                raise InvalidFilter(f"value filter on a sub-attribute {tok.text!r}")
            self.take()
            self.enter()
            inner = self.or_expr(relative=True)
            self.expect("rbrack")
            self.depth -= 1
            # Entra: attr[filter].sub op value  ->  attr[filter and sub op value]
            after = self.peek()
            if after is not None and after.kind == "word" and after.text.startswith("."):
                self.take()
                sub = after.text[1:]
                if not _ATTRNAME.match(sub):
                    raise InvalidFilter(f"invalid sub-attribute {after.text!r}")
                cond = self.comparison(AttrPath("", sub))
                inner = And(inner, cond)
            return ValuePath(path, inner)
        return self.comparison(parse_attr_path(tok.text, relative=relative))

    def comparison(self, path: AttrPath) -> Filter:
        optok = self.take()
        op = optok.text.lower()
        if optok.kind != "word" or (op not in COMPARE_OPS and op != "pr"):
            raise InvalidFilter(f"unknown operator {optok.text!r} at position {optok.pos}")
        if op == "pr":
            return Present(path)
        return Compare(path, op, self.value())

    def value(self) -> Literal:
        tok = self.take()
        if tok.kind == "string":
            try:
                decoded = json.loads(tok.text)
            except ValueError as exc:
                raise InvalidFilter(f"invalid string literal at position {tok.pos}") from exc
            assert isinstance(decoded, str)
            if "\x00" in decoded:  # no stored value holds NUL (scim.resource), and PostgreSQL text cannot
                raise InvalidFilter(f"string literal at position {tok.pos} contains a NUL character")
            try:  # a \ud83d escape without its pair decodes to a lone surrogate: not Unicode text (RFC 8259 §8.2)
                decoded.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidFilter(f"string literal at position {tok.pos} contains an unpaired surrogate") from None
            return decoded
        if tok.kind != "word":
            raise InvalidFilter(f"expected a value at position {tok.pos}, found {tok.text!r}")
        low = tok.text.lower()
        if low == "true":
            return True
        if low == "false":
            return False
        if low == "null":
            return None
        if _NUMBER.match(tok.text):
            if re.fullmatch(r"-?\d+", tok.text):
                return int(tok.text)
            return Decimal(tok.text)
        if self.unquoted and low not in ("and", "or", "not"):
            return tok.text
        raise InvalidFilter(f"invalid value {tok.text!r} at position {tok.pos}; strings must be quoted")


def parse_filter(text: str, *, unquoted_values: bool = False) -> Filter:
    """Parse a filter into an unbound AST. ``unquoted_values`` is a tolerance (see ``tolerance.py``)."""
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidFilter(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    return _Parser(text, unquoted_values=unquoted_values).parse()


def parse_value_filter(text: str) -> Filter:
    """Parse the relative filter inside ``attr[...]`` of a PATCH path."""
    if len(text) > MAX_FILTER_LENGTH:
        raise InvalidFilter(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    p = _Parser(text, unquoted_values=False)
    if not p.toks:
        raise InvalidFilter("empty value filter")
    expr = p.or_expr(relative=True)
    if p.peek() is not None:
        tok = p.peek()
        assert tok is not None
        raise InvalidFilter(f"unexpected {tok.text!r} at position {tok.pos}")
    return expr


# ---------------------------------------------------------------------------------------------------------------
# Binding: canonical names, definitions, type checks (RFC 7644 §3.4.2.2 operator rules)
# ---------------------------------------------------------------------------------------------------------------
def _check_op(path: AttrPath, op: str, value: Literal) -> None:
    d = path.definition
    if d is None:
        return
    if d.type == "complex":
        raise InvalidFilter(f"attribute {path} is complex; compare one of its sub-attributes")
    if d.type in ("boolean", "binary") and op in ORDER_OPS | SUBSTRING_OPS:
        raise InvalidFilter(f"operator {op!r} is not allowed on {d.type} attribute {path}")
    if op in SUBSTRING_OPS and d.type not in ("string", "reference"):
        raise InvalidFilter(f"operator {op!r} needs a string attribute; {path} is {d.type}")
    if value is None and op not in ("eq", "ne"):
        raise InvalidFilter(f"null can only be compared with eq or ne ({path})")


def bind(node: Filter, registry: SchemaRegistry, resource_type: str, *, _parent: Attribute | None = None,
         _parent_path: AttrPath | None = None) -> Filter:
    """Resolve every attribute path against the schema: canonical names, definitions; unknown → invalidFilter.

    A multi-valued complex attribute used without sub-attribute (``emails eq "x"``, ``members eq "id"``)
    is bound to its ``value`` sub-attribute (RFC 7644 §3.4.2.2: "complex attribute ... value").
    """
    if isinstance(node, And):
        return And(bind(node.left, registry, resource_type, _parent=_parent, _parent_path=_parent_path),
                   bind(node.right, registry, resource_type, _parent=_parent, _parent_path=_parent_path))
    if isinstance(node, Or):
        return Or(bind(node.left, registry, resource_type, _parent=_parent, _parent_path=_parent_path),
                  bind(node.right, registry, resource_type, _parent=_parent, _parent_path=_parent_path))
    if isinstance(node, Not):
        return Not(bind(node.expr, registry, resource_type, _parent=_parent, _parent_path=_parent_path))
    if isinstance(node, ValuePath):
        path = _bind_path(node.path, registry, resource_type, None, None, implicit_value=False)
        d = path.definition
        if d is None or d.type != "complex" or not d.multi_valued:
            raise InvalidFilter(f"{node.path} is not a multi-valued complex attribute")
        inner = bind(node.filter, registry, resource_type, _parent=d, _parent_path=path)
        return ValuePath(path, inner)
    path = _bind_path(node.path, registry, resource_type, _parent, _parent_path)
    if isinstance(node, Present):
        return Present(path)
    _check_op(path, node.op, node.value)
    return Compare(path, node.op, node.value)


def _bind_path(path: AttrPath, registry: SchemaRegistry, resource_type: str, parent: Attribute | None,
               parent_path: AttrPath | None, *, implicit_value: bool = True) -> AttrPath:
    if parent is not None and parent_path is not None:
        sub = parent.sub(path.attr)
        if sub is None or path.sub is not None:
            raise InvalidFilter(f"unknown sub-attribute {path.attr!r} of {parent_path}")
        # relative path: attr carries the sub-attribute name
        return AttrPath(parent_path.urn, sub.name, None, sub, parent)
    dotted = f"{path.urn}:{path.dotted()}" if path.urn else path.dotted()
    res = registry.resolve(resource_type, dotted)
    if res is None:
        raise InvalidFilter(f"unknown attribute {dotted!r}")
    if res.parent is not None:
        return AttrPath(res.schema, res.parent.name, res.attribute.name, res.attribute, res.parent)
    d = res.attribute
    if implicit_value and d.type == "complex" and d.multi_valued and d.sub("value") is not None:
        v = d.sub("value")
        return AttrPath(res.schema, d.name, v.name if v else "value", v, d)
    return AttrPath(res.schema, d.name, None, d, None)


def parse_and_bind(text: str, registry: SchemaRegistry, resource_type: str, *,
                   unquoted_values: bool = False) -> Filter:
    return bind(parse_filter(text, unquoted_values=unquoted_values), registry, resource_type)


# ---------------------------------------------------------------------------------------------------------------
# In-memory evaluation (RFC 7644 §3.4.2.2 semantics)
# ---------------------------------------------------------------------------------------------------------------
def _get_ci(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if k.lower() == low:
            return v
    return None


def _values_at(doc: Mapping[str, Any], path: AttrPath, core_urn: str) -> list[Any]:
    """All values the path designates in ``doc`` (flattening multi-valued attributes)."""
    container: Any = doc
    if path.urn and path.urn != core_urn and path.urn.lower() != core_urn.lower():
        container = _get_ci(doc, path.urn)
        if not isinstance(container, Mapping):
            return []
    top = _get_ci(container, path.attr)
    if top is None:
        return []
    tops = top if isinstance(top, list) else [top]
    if path.sub is None:
        return [t for t in tops if t is not None]
    out: list[Any] = []
    for t in tops:
        if isinstance(t, Mapping):
            v = _get_ci(t, path.sub)
            if isinstance(v, list):
                out.extend(x for x in v if x is not None)
            elif v is not None:
                out.append(v)
    return out


def parse_datetime(value: str) -> _dt.datetime | None:
    """xsd:dateTime (RFC 7643 §2.3.5) to an aware datetime; naive values are taken as UTC."""
    try:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        d = _dt.datetime.fromisoformat(text)
    except (ValueError, AttributeError):
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.UTC)
    return d


def _coerce_pair(actual: Any, expected: Literal, d: Attribute | None) -> tuple[Any, Any] | None:
    """Bring actual and expected to comparable Python values per the attribute type; None if incomparable."""
    typ = d.type if d is not None else _guess_type(actual)
    if typ == "boolean":
        if isinstance(actual, str) and actual.lower() in ("true", "false"):
            actual = actual.lower() == "true"
        if not isinstance(expected, bool) or not isinstance(actual, bool):
            return None
        return actual, expected
    if typ in ("integer", "decimal"):
        try:
            a = Decimal(str(actual)) if not isinstance(actual, bool) else None
            e = Decimal(str(expected)) if not isinstance(expected, bool) and expected is not None else None
        except InvalidOperation:
            return None
        if a is None or e is None:
            return None
        return a, e
    if typ == "dateTime":
        if not isinstance(actual, str) or not isinstance(expected, str):
            return None
        a_dt, e_dt = parse_datetime(actual), parse_datetime(expected)
        if a_dt is None or e_dt is None:
            return None
        return a_dt, e_dt
    # string, reference, binary
    if isinstance(expected, bool) or expected is None:
        return None
    if isinstance(actual, str):
        a_s = actual
    elif isinstance(actual, int | float):
        a_s = str(actual)
    else:
        a_s = json.dumps(actual)
    e_s = str(expected)
    if d is None or not d.case_exact:
        a_s, e_s = a_s.lower(), e_s.lower()
    return a_s, e_s


def _guess_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "decimal"
    return "string"


def _compare_one(actual: Any, op: str, expected: Literal, d: Attribute | None) -> bool:
    pair = _coerce_pair(actual, expected, d)
    if pair is None:
        return False
    a, e = pair
    if op == "eq":
        return bool(a == e)
    if op == "co":
        return bool(e in a)
    if op == "sw":
        return bool(a.startswith(e))
    if op == "ew":
        return bool(a.endswith(e))
    if op == "gt":
        return bool(a > e)
    if op == "ge":
        return bool(a >= e)
    if op == "lt":
        return bool(a < e)
    if op == "le":
        return bool(a <= e)
    raise InvalidFilter(f"unknown operator {op!r}")


def _present(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, str | list | dict):
        return len(v) > 0
    return True


def evaluate(node: Filter, doc: Mapping[str, Any], core_urn: str) -> bool:
    """Does ``doc`` (a resource document, canonical keys) satisfy the *bound* filter ``node``?"""
    if isinstance(node, And):
        return evaluate(node.left, doc, core_urn) and evaluate(node.right, doc, core_urn)
    if isinstance(node, Or):
        return evaluate(node.left, doc, core_urn) or evaluate(node.right, doc, core_urn)
    if isinstance(node, Not):
        return not evaluate(node.expr, doc, core_urn)
    if isinstance(node, ValuePath):
        elements = _values_at(doc, replace(node.path, sub=None), core_urn)
        return any(isinstance(el, Mapping) and _eval_relative(node.filter, el) for el in elements)
    values = _values_at(doc, node.path, core_urn)
    return _eval_leaf(node, values)


def _eval_leaf(node: Compare | Present, values: Sequence[Any]) -> bool:
    if isinstance(node, Present):
        return any(_present(v) for v in values)
    d = node.path.definition
    if node.value is None:
        present = any(_present(v) for v in values)
        return (not present) if node.op == "eq" else present
    if node.op == "ne":
        return not any(_compare_one(v, "eq", node.value, d) for v in values)
    return any(_compare_one(v, node.op, node.value, d) for v in values)


def _eval_relative(node: Filter, element: Mapping[str, Any]) -> bool:
    if isinstance(node, And):
        return _eval_relative(node.left, element) and _eval_relative(node.right, element)
    if isinstance(node, Or):
        return _eval_relative(node.left, element) or _eval_relative(node.right, element)
    if isinstance(node, Not):
        return not _eval_relative(node.expr, element)
    if isinstance(node, ValuePath):
        raise InvalidFilter("value filters cannot be nested")
    v = _get_ci(element, node.path.attr)
    values = v if isinstance(v, list) else ([] if v is None else [v])
    return _eval_leaf(node, values)


def matches_element(node: Filter, element: Mapping[str, Any]) -> bool:
    """Evaluate a bound *relative* filter (from ``attr[...]``) against one element of a multi-valued attribute."""
    return _eval_relative(node, element)


def to_string(node: Filter, *, _relative: bool = False) -> str:
    """Render an AST back to filter syntax (for logs and tests); parsing the result gives the same AST."""
    if isinstance(node, And):
        return f"({to_string(node.left, _relative=_relative)} and {to_string(node.right, _relative=_relative)})"
    if isinstance(node, Or):
        return f"({to_string(node.left, _relative=_relative)} or {to_string(node.right, _relative=_relative)})"
    if isinstance(node, Not):
        return f"not ({to_string(node.expr, _relative=_relative)})"
    if isinstance(node, ValuePath):
        return f"{node.path}[{to_string(node.filter, _relative=True)}]"
    # inside attr[...] paths are relative: a bound one still carries the parent's URN, which must not be written
    path = node.path.dotted() if _relative else str(node.path)
    if isinstance(node, Present):
        return f"{path} pr"
    v = node.value
    lit = ("true" if v else "false") if isinstance(v, bool) else "null" if v is None else (
        json.dumps(v) if isinstance(v, str) else str(v))
    return f"{path} {node.op} {lit}"
