"""Every documented Entra expression function (EXP-2) and the evaluator.

Value model (see the package docstring): values are ``str``, ``int``, ``list`` (multi-valued), ``dict`` (an app
role), ``None`` (null); booleans are the .NET strings ``"True"``/``"False"``.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import string
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import dates
from .core import EvalContext, ExpressionError, UniqueValueExhausted
from .nodes import Attr, Call, Compare, Empty, Literal, Node

TRUE = "True"
FALSE = "False"

NAMED_CONSTANTS: dict[str, Any] = {
    "vbBinaryCompare": 0,
    "vbTextCompare": 1,
    "True": TRUE,
    "False": FALSE,
    "NULL": None,
    "Null": None,
    "Nothing": None,
}


class _Drop(Exception):
    """Raised by IgnoreFlowIfNullOrEmpty; turned into the IGNORE sentinel by Expression.evaluate."""


# --- value helpers ----------------------------------------------------------------------------------------------


def normalize(value: Any) -> Any:
    """A source attribute value in the expression value model (bool → "True"/"False", tuple → list)."""
    if isinstance(value, bool):
        return TRUE if value else FALSE
    if isinstance(value, list | tuple | set | frozenset):
        return [normalize(v) for v in value]
    return value


def as_text(value: Any) -> str | None:
    """String form of a scalar (.NET ``ToString``): None stays None, booleans "True"/"False"."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return TRUE if value else FALSE
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, datetime):
        return dates.format_entra(value)
    raise TypeError(f"expected a single value, got {type(value).__name__}")


def as_bool(value: Any) -> bool | None:
    """Truth of a value: "True"/"False" (any case), numbers (non-zero is True); None/"" → False.

    Returns None when the value is not boolean-like (e.g. ``"abc"``).
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        s = value.strip()
        if s == "":
            return False
        if s.lower() == "true":
            return True
        if s.lower() == "false":
            return False
        try:
            return float(s) != 0
        except ValueError:
            return None
    return None


def _b(flag: bool) -> str:
    return TRUE if flag else FALSE


_INT_RE = re.compile(r"^\s*[+-]?\d+\s*$")


def _parse_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        s = value.strip()
        if _INT_RE.match(s) and len(s) <= 40:
            return int(s)
        if s[:2] in ("&H", "&h") and 2 < len(s) <= 66:
            try:
                return int(s[2:], 16)
            except ValueError:
                return None
    return None


# --- evaluator --------------------------------------------------------------------------------------------------


class Evaluator:
    def __init__(self, text: str, attributes: Mapping[str, Any], ctx: EvalContext) -> None:
        self.text = text
        self.attributes = attributes
        self.ctx = ctx
        self._folded: dict[str, str] | None = None

    def fail(self, node: Node, message: str) -> ExpressionError:
        prefix = f"{node.name}: " if isinstance(node, Call) else ""
        return ExpressionError(prefix + message, node.column, self.text)

    def lookup(self, name: str) -> Any:
        if name in self.attributes:
            return normalize(self.attributes[name])
        if self._folded is None:
            self._folded = {k.lower(): k for k in self.attributes}
        key = self._folded.get(name.lower())
        return normalize(self.attributes[key]) if key is not None else None

    def eval(self, node: Node) -> Any:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Attr):
            return self.lookup(node.name)
        if isinstance(node, Empty):
            return None
        if isinstance(node, Compare):
            return _b(self.compare(node))
        assert isinstance(node, Call)
        fn = FUNCTIONS[node.name]
        try:
            if fn.lazy:
                return fn.impl(self, node, [])
            return fn.impl(self, node, [self.eval(a) for a in node.args])
        except (ExpressionError, _Drop):
            raise
        except (ValueError, TypeError, ArithmeticError, LookupError, re.error, UnicodeError) as exc:
            raise self.fail(node, str(exc) or type(exc).__name__) from exc

    # typed argument accessors -----------------------------------------------------------------------------------

    def scalar(self, call: Call, value: Any, pos: int) -> Any:
        if isinstance(value, list):
            if not value:
                return None
            if len(value) == 1:
                return value[0]
            raise self.fail(call, f"argument {pos} is multi-valued ({len(value)} values); a single value is needed")
        if isinstance(value, dict):
            raise self.fail(call, f"argument {pos} is a complex value; a string is needed")
        return value

    def text_arg(self, call: Call, value: Any, pos: int) -> str | None:
        v = self.scalar(call, value, pos)
        try:
            return as_text(v)
        except TypeError as exc:
            raise self.fail(call, f"argument {pos}: {exc}") from exc

    def int_arg(self, call: Call, value: Any, pos: int, *, default: int | None = None) -> int:
        v = self.scalar(call, value, pos)
        if v is None and default is not None:
            return default
        n = _parse_int(v)
        if n is None:
            raise self.fail(call, f"argument {pos} must be an integer, got {v!r}")
        return n

    def date_arg(self, call: Call, value: Any, pos: int) -> datetime:
        v = self.scalar(call, value, pos)
        if isinstance(v, dates.DateTimeValue):
            return v.dt
        if isinstance(v, datetime):
            return v if v.tzinfo else v.replace(tzinfo=UTC)
        if not isinstance(v, str) or not v.strip():
            raise self.fail(call, f"argument {pos} must be a date/time, got {v!r}")
        try:
            return dates.parse_datetime(v)
        except (ValueError, OverflowError) as exc:
            raise self.fail(call, f"argument {pos}: {exc}") from exc

    def now(self) -> datetime:
        now = self.ctx.now or datetime.now(UTC)
        return now if now.tzinfo else now.replace(tzinfo=UTC)

    def compare(self, node: Compare) -> bool:
        left = self.eval(node.left)
        right = self.eval(node.right)
        return compare_values(self, node, node.op, left, right)


def compare_values(ev: Evaluator, node: Node, op: str, left: Any, right: Any) -> bool:
    """IIF/CBool comparison. Null compares as "" (EXP-3 decision). Two integers (or integer strings) compare
    numerically; anything else compares as case-sensitive (ordinal) strings."""
    values = []
    for v in (left, right):
        if isinstance(v, list):
            if len(v) > 1:
                raise ev.fail(node, f"cannot compare a multi-valued value with {op!r}")
            v = v[0] if v else None
        try:
            values.append(as_text(v) or "")
        except TypeError as exc:
            raise ev.fail(node, f"cannot compare: {exc}") from exc
    a, b = values
    na, nb = _parse_int(a), _parse_int(b)
    x: Any
    y: Any
    x, y = (na, nb) if na is not None and nb is not None else (a, b)
    if op == "=":
        return bool(x == y)
    if op == "<>":
        return bool(x != y)
    if op == ">":
        return bool(x > y)
    if op == ">=":
        return bool(x >= y)
    if op == "<":
        return bool(x < y)
    if op == "<=":
        return bool(x <= y)
    raise ev.fail(node, f"unknown operator {op!r}")  # pragma: no cover - the lexer only yields the six


# --- the function table -----------------------------------------------------------------------------------------

Impl = Callable[[Evaluator, Call, list[Any]], Any]


@dataclass(frozen=True)
class Function:
    name: str
    min_args: int
    max_args: int | None  # None: variadic
    impl: Impl
    lazy: bool = False  # impl evaluates its own arguments (args list is empty)
    optional: frozenset[int] | None = frozenset()  # 0-based positions that may be left empty; None = all


FUNCTIONS: dict[str, Function] = {}


def _fn(name: str, min_args: int, max_args: int | None = -1, *, lazy: bool = False,
        optional: frozenset[int] | None = frozenset()) -> Callable[[Impl], Impl]:
    def deco(impl: Impl) -> Impl:
        FUNCTIONS[name] = Function(name, min_args, min_args if max_args == -1 else max_args, impl, lazy, optional)
        return impl
    return deco


def check_call(call: Call, text: str) -> None:
    """Parse-time validation of one call (argument count, empty arguments, function-specific rules)."""
    fn = FUNCTIONS[call.name]
    n = len(call.args)
    if n < fn.min_args or (fn.max_args is not None and n > fn.max_args):
        if fn.max_args is None:
            expected = f"at least {fn.min_args}"
        elif fn.min_args == fn.max_args:
            expected = str(fn.min_args)
        else:
            expected = f"{fn.min_args} to {fn.max_args}"
        s = "" if expected == "1" else "s"
        raise ExpressionError(f"{call.name} takes {expected} argument{s}, got {n}", call.column, text)
    if fn.optional is not None:
        for i, a in enumerate(call.args):
            if isinstance(a, Empty) and i not in fn.optional:
                raise ExpressionError(f"{call.name}: argument {i + 1} is required and cannot be empty",
                                      a.column, text)
    if call.name == "Switch" and n % 2:
        raise ExpressionError("Switch takes the source, the default value and key/value pairs: "
                              f"an even number of arguments, got {n}", call.column, text)
    if call.name == "Replace":
        _replace_mode(call, text)


# Append ---------------------------------------------------------------------------------------------------------

@_fn("Append", 2)
def _append(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    source = ev.text_arg(call, a[0], 1)
    suffix = ev.text_arg(call, a[1], 2)
    if source is None:
        return None
    return source + (suffix or "")


# App roles ------------------------------------------------------------------------------------------------------

def _roles(ev: Evaluator, call: Call, value: Any) -> list[dict[str, Any]] | None:
    """appRoleAssignments → [{value, display}] (accepts strings or dicts with value/displayName/display)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, dict):
            raw = item.get("value", item.get("appRoleValue"))
            display = item.get("displayName", item.get("display", raw))
        else:
            raw, display = item, item
        text = as_text(normalize(raw)) if not isinstance(raw, dict | list) else None
        if not text or text in seen:
            continue  # the default access role has no value
        seen.add(text)
        out.append({"value": text, "display": as_text(normalize(display)) or text})
    return out


def _complex_roles(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    roles = _roles(ev, call, a[0])
    if roles is None:
        return None
    return [
        {"primary": False, "type": "WindowsAzureActiveDirectoryRole", "display": r["display"], "value": r["value"]}
        for r in roles
    ]


_fn("AppRoleAssignmentsComplex", 1)(_complex_roles)
_fn("AssertiveAppRoleAssignmentsComplex", 1)(_complex_roles)


@_fn("SingleAppRoleAssignment", 1)
def _single_role(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    roles = _roles(ev, call, a[0])
    return roles[0]["value"] if roles else None


# Numbers and booleans -------------------------------------------------------------------------------------------

@_fn("BitAnd", 2)
def _bitand(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    return ev.int_arg(call, a[0], 1) & ev.int_arg(call, a[1], 2)


@_fn("CBool", 1)
def _cbool(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    v = ev.scalar(call, a[0], 1)
    flag = as_bool(v)
    if flag is None:
        raise ev.fail(call, f"cannot convert {v!r} to a boolean")
    return _b(flag)


@_fn("Not", 1)
def _not(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    v = ev.text_arg(call, a[0], 1)
    return FALSE if v is not None and v.strip().lower() == "true" else TRUE


@_fn("CStr", 1)
def _cstr(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    return ev.text_arg(call, a[0], 1)


@_fn("Count", 1)
def _count(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    v = a[0]
    if v is None:
        return 0
    return len(v) if isinstance(v, list) else 1


@_fn("IsNull", 1)
def _isnull(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    return _b(a[0] is None or a[0] == [])


def _null_or_empty(v: Any) -> bool:
    return v is None or v == "" or v == []


@_fn("IsNullOrEmpty", 1)
def _isnullorempty(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    return _b(_null_or_empty(a[0]))


@_fn("IsPresent", 1)
def _ispresent(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    return _b(not _null_or_empty(a[0]))


@_fn("IsString", 1)
def _isstring(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    return _b(isinstance(a[0], str))


# Control flow (lazy) --------------------------------------------------------------------------------------------

@_fn("IIF", 3, lazy=True)
def _iif(ev: Evaluator, call: Call, _: list[Any]) -> Any:
    cond_node = call.args[0]
    if isinstance(cond_node, Compare):
        flag: bool | None = ev.compare(cond_node)
    else:
        v = ev.scalar(call, ev.eval(cond_node), 1)
        flag = as_bool(v)
        if flag is None:
            raise ev.fail(call, f"the condition must be a comparison or a boolean, got {v!r}")
    return ev.eval(call.args[1] if flag else call.args[2])


@_fn("Switch", 2, None, lazy=True, optional=frozenset({1}))
def _switch(ev: Evaluator, call: Call, _: list[Any]) -> Any:
    source = ev.text_arg(call, ev.eval(call.args[0]), 1) or ""  # null matches the key "" (Entra's advice)
    for i in range(2, len(call.args), 2):
        key = ev.text_arg(call, ev.eval(call.args[i]), i + 1) or ""
        if key == source:  # case-sensitive (ordinal), as documented
            return ev.eval(call.args[i + 1])
    return ev.eval(call.args[1])


@_fn("Coalesce", 1, None, lazy=True, optional=None)
def _coalesce(ev: Evaluator, call: Call, _: list[Any]) -> Any:
    saw_empty = False
    for node in call.args:
        v = ev.eval(node)
        if v is None or v == []:
            continue
        if v == "":
            saw_empty = True
            continue
        return v
    return "" if saw_empty else None


@_fn("IgnoreFlowIfNullOrEmpty", 1, lazy=True)
def _ignoreflow(ev: Evaluator, call: Call, _: list[Any]) -> Any:
    v = ev.eval(call.args[0])
    if _null_or_empty(v):
        raise _Drop()
    return v


@_fn("SelectUniqueValue", 2, None, lazy=True)
def _selectunique(ev: Evaluator, call: Call, _: list[Any]) -> Any:
    tried: list[str] = []
    for i, node in enumerate(call.args, 1):
        candidate = ev.text_arg(call, ev.eval(node), i)
        if not candidate or candidate in tried:
            continue
        tried.append(candidate)
        if ev.ctx.is_unique is None or ev.ctx.is_unique(candidate):
            return candidate
    raise UniqueValueExhausted(
        f"SelectUniqueValue: every candidate is already taken in the target ({', '.join(tried) or 'none'})",
        call.column, ev.text,
    )


# Encodings ------------------------------------------------------------------------------------------------------

@_fn("ConvertToBase64", 1)
def _base64(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    return None if s is None else base64.b64encode(s.encode("utf-16-le", "surrogatepass")).decode("ascii")


@_fn("ConvertToUTF8Hex", 1)
def _utf8hex(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    return None if s is None else s.encode("utf-8", "surrogatepass").hex().upper()


@_fn("Guid", 0)
def _guid(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    return str(uuid.uuid4())


@_fn("Redact", 1)
def _redact(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    v = a[0]
    for item in v if isinstance(v, list) else [v]:
        if item is not None and not isinstance(item, dict):
            text = as_text(item)
            if text:
                ev.ctx.redactions.add(text)
    return v


# Dates ----------------------------------------------------------------------------------------------------------

def _blank(value: Any) -> bool:
    """Date functions treat a null or empty (e.g. an empty CSV cell) date as null: nothing flows."""
    return value is None or (isinstance(value, str) and not value.strip())


@_fn("CDate", 1)
def _cdate(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    if _blank(ev.scalar(call, a[0], 1)):
        return None
    return dates.DateTimeValue(ev.date_arg(call, a[0], 1))


@_fn("Now", 0)
def _now(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    return dates.DateTimeValue(ev.now())


def _interval(ev: Evaluator, call: Call, value: Any) -> str:
    interval = ev.text_arg(call, value, 1)
    if interval not in dates._INTERVALS:
        raise ev.fail(call, f"unknown interval {interval!r} (expected one of yyyy, m, d, ww, h, n, s)")
    return interval


@_fn("DateAdd", 3)
def _dateadd(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    interval = _interval(ev, call, a[0])
    number = ev.int_arg(call, a[1], 2)
    if _blank(ev.scalar(call, a[2], 3)):
        return None
    return dates.DateTimeValue(dates.add_interval(interval, number, ev.date_arg(call, a[2], 3)))


@_fn("DateDiff", 3)
def _datediff(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    interval = _interval(ev, call, a[0])
    if _blank(ev.scalar(call, a[1], 2)) or _blank(ev.scalar(call, a[2], 3)):
        return None
    return dates.diff_interval(interval, ev.date_arg(call, a[1], 2), ev.date_arg(call, a[2], 3))


@_fn("DateFromNum", 1)
def _datefromnum(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    if _blank(ev.scalar(call, a[0], 1)):
        return None
    n = ev.int_arg(call, a[0], 1)
    if n < 0:
        raise ev.fail(call, f"negative AD date value {n}")
    return dates.DateTimeValue(dates.filetime_to_datetime(n))


@_fn("NumFromDate", 1)
def _numfromdate(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    if _blank(ev.scalar(call, a[0], 1)):
        return None
    return dates.datetime_to_filetime(ev.date_arg(call, a[0], 1))


_STYLES = {
    "none", "allowleadingwhite", "allowtrailingwhite", "allowinnerwhite", "allowwhitespaces", "nocurrentdatedefault",
    "adjusttouniversal", "assumelocal", "assumeuniversal", "roundtripkind",
}


@_fn("FormatDateTime", 4, optional=frozenset({1}))
def _formatdatetime(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    source = ev.text_arg(call, a[0], 1)
    styles = ev.text_arg(call, a[1], 2) or ""
    in_fmt = ev.text_arg(call, a[2], 3)
    out_fmt = ev.text_arg(call, a[3], 4)
    names = [s.strip().rsplit(".", 1)[-1].lower() for s in re.split(r"[,|]", styles) if s.strip()]
    for name in names:
        if name not in _STYLES:
            raise ev.fail(call, f"unknown DateTimeStyles value {name!r}")
    if source is None:
        return None
    if not in_fmt or not out_fmt:
        raise ev.fail(call, "the input and output formats are required")
    trim = not names or bool({"allowleadingwhite", "allowtrailingwhite", "allowwhitespaces"} & set(names))
    try:
        dt = dates.dotnet_parse(source, in_fmt, trim=trim)
        return dates.dotnet_format(dt, out_fmt)
    except (ValueError, OverflowError) as exc:
        raise ev.fail(call, str(exc)) from exc


# Strings --------------------------------------------------------------------------------------------------------

@_fn("InStr", 2, 4, optional=frozenset({2, 3}))
def _instr(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    value1 = ev.text_arg(call, a[0], 1)
    value2 = ev.text_arg(call, a[1], 2) or ""
    start = ev.int_arg(call, a[2], 3, default=1) if len(a) > 2 else 1
    compare = 0
    if len(a) > 3 and a[3] is not None:
        c = ev.scalar(call, a[3], 4)
        if c in (0, "0", "vbBinaryCompare"):
            compare = 0
        elif c in (1, "1", "vbTextCompare"):
            compare = 1
        else:
            raise ev.fail(call, f"compareType must be vbBinaryCompare or vbTextCompare, got {c!r}")
    if start < 1:
        raise ev.fail(call, f"start must be 1 or more, got {start}")
    if value1 is None:
        return None
    if compare:
        value1 = "".join(_lower1(c) for c in value1)  # char-wise, so positions are preserved
        value2 = "".join(_lower1(c) for c in value2)
    if start > len(value1) + 1:
        return 0
    return value1.find(value2, start - 1) + 1


@_fn("Join", 2, None, optional=frozenset(range(1, 10_001)))
def _join(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    sep = ev.text_arg(call, a[0], 1) or ""
    parts: list[str] = []
    for i, v in enumerate(a[1:], 2):
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, dict):
                raise ev.fail(call, f"argument {i} holds a complex value")
            text = as_text(item)
            if text:  # null and empty values are skipped (Entra's "Doe, John" example)
                parts.append(text)
    return sep.join(parts)


@_fn("Left", 2)
def _left(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    n = ev.int_arg(call, a[1], 2)
    if s is None:
        return ""
    if n < 0:
        return s
    return s[:n]


@_fn("Mid", 3)
def _mid(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    start = ev.int_arg(call, a[1], 2)
    length = ev.int_arg(call, a[2], 3)
    if start < 1:
        raise ev.fail(call, f"start is 1-based and must be 1 or more, got {start}")
    if length < 0:
        raise ev.fail(call, f"length must not be negative, got {length}")
    if s is None:
        return None
    return s[start - 1 : start - 1 + length]


_SPECIAL_FOLDS = {
    "ß": "ss", "æ": "ae", "Æ": "AE", "ø": "oe", "Ø": "OE", "œ": "oe", "Œ": "OE",
    "ł": "l", "Ł": "L", "ı": "i",
}
_NORMALIZABLE_BASES = set("aAcCdDeEgGiIlLnNoOrRsStTuUyYzZ")


def normalize_diacritics(s: str) -> str:
    """Entra's NormalizeDiacritics table: Latin letters a c d e g i l n o r s t u y z lose their marks;
    æ→ae, ø→oe, œ→oe, ł→l, ı→i, ß→ss. Other characters (e.g. Cyrillic й) are left alone."""
    out: list[str] = []
    decomposed = unicodedata.normalize("NFD", s)
    i, n = 0, len(decomposed)
    while i < n:
        base = decomposed[i]
        j = i + 1
        while j < n and unicodedata.combining(decomposed[j]):
            j += 1
        marks = decomposed[i + 1 : j]
        if base in _SPECIAL_FOLDS:
            out.append(_SPECIAL_FOLDS[base])
        elif base in _NORMALIZABLE_BASES:
            out.append(base)
        else:
            out.append(unicodedata.normalize("NFC", base + marks))
        i = j
    return "".join(out)


@_fn("NormalizeDiacritics", 1)
def _normalizediacritics(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    return None if s is None else normalize_diacritics(s)


_TITLE_SEPARATORS = {"Zs", "Zl", "Zp", "Cc", "Cf", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So"}
_LETTER = {"Lu", "Ll", "Lt", "Lm", "Lo"}


def _upper1(c: str) -> str:
    u = c.upper()
    return u if len(u) == 1 else c


def _lower1(c: str) -> str:
    lo = c.lower()
    return lo if len(lo) == 1 else c


def to_title_case(s: str) -> str:
    """.NET ``TextInfo.ToTitleCase`` applied to the lower-cased input (so all-caps words are converted too).

    A word starts at a letter and runs over letters, apostrophes and non-separator characters (digits, marks);
    separators are the Unicode categories listed in Entra's PCase documentation.
    """
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if unicodedata.category(c) in _LETTER:
            out.append(_upper1(c))
            i += 1
            while i < n:
                c = s[i]
                cat = unicodedata.category(c)
                if cat in _LETTER or c == "'" or cat not in _TITLE_SEPARATORS:
                    out.append(_lower1(c))
                    i += 1
                else:
                    break
        else:
            out.append(c)
            i += 1
    return "".join(out)


@_fn("PCase", 1, 2, optional=frozenset({1}))
def _pcase(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    separators = ev.text_arg(call, a[1], 2) if len(a) > 1 else None
    if s is None:
        return None
    if not separators:
        return to_title_case(s)
    out: list[str] = []
    start_of_word = True
    for c in s:
        if c in separators:
            out.append(c)
            start_of_word = True
        else:
            out.append(_upper1(c) if start_of_word else _lower1(c))
            start_of_word = False
    return "".join(out)


_SPECIALS = "~!@#$%^&*_-+=`|\\(){}[]:;\"'<>,.?/"


@_fn("RandomString", 5, 6, optional=frozenset({5}))
def _randomstring(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    length = ev.int_arg(call, a[0], 1)
    mins = [ev.int_arg(call, a[i], i + 1) for i in range(1, 5)]
    avoid = (ev.text_arg(call, a[5], 6) if len(a) > 5 else None) or ""
    if not 1 <= length <= 256:
        raise ev.fail(call, f"length must be between 1 and 256, got {length}")
    if any(m < 0 for m in mins):
        raise ev.fail(call, "minimum counts must not be negative")
    if sum(mins) > length:
        raise ev.fail(call, f"the minimum counts ({sum(mins)}) exceed the length ({length})")
    pools = [
        "".join(c for c in p if c not in avoid)
        for p in (string.digits, _SPECIALS, string.ascii_uppercase, string.ascii_lowercase)
    ]
    chars: list[str] = []
    for pool, minimum in zip(pools, mins, strict=True):
        if minimum and not pool:
            raise ev.fail(call, "CharactersToAvoid excludes every character of a required class")
        chars.extend(secrets.choice(pool) for _ in range(minimum))
    filler = "".join(p for p, m in zip(pools, mins, strict=True) if m) or pools[0] + pools[2] + pools[3]
    if len(chars) < length and not filler:
        raise ev.fail(call, "CharactersToAvoid excludes every allowed character")
    chars.extend(secrets.choice(filler) for _ in range(length - len(chars)))
    rng = secrets.SystemRandom()
    rng.shuffle(chars)
    return "".join(chars)


@_fn("RemoveDuplicates", 1)
def _removeduplicates(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    v = a[0]
    if v is None:
        return None
    if not isinstance(v, list):
        return [v]
    out: list[Any] = []
    for item in v:
        if item not in out:
            out.append(item)
    return out


@_fn("Item", 2)
def _item(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    index = ev.int_arg(call, a[1], 2)
    if index < 1:
        raise ev.fail(call, f"the index is 1-based and must be 1 or more, got {index}")
    v = a[0]
    items = v if isinstance(v, list) else [] if v is None else [v]
    return items[index - 1] if index <= len(items) else None


@_fn("Split", 2)
def _split(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    delim = ev.text_arg(call, a[1], 2)
    if not delim:
        raise ev.fail(call, "the delimiter must not be empty")
    if s is None:
        return None
    # Whitespace around each value is trimmed: Microsoft documents "PermissionSetOne, PermissionSetTwo" split on
    # "," as ["PermissionSetOne", "PermissionSetTwo"].
    return [part.strip() for part in s.split(delim)]


@_fn("StripSpaces", 1)
def _stripspaces(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    return None if s is None else s.replace(" ", "")


_CULTURE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def _culture(ev: Evaluator, call: Call, a: list[Any]) -> str:
    culture = (ev.text_arg(call, a[1], 2) if len(a) > 1 else None) or ""
    if culture and not _CULTURE.match(culture):
        raise ev.fail(call, f"invalid culture name {culture!r} (expected e.g. en-US)")
    return culture.split("-")[0].split("_")[0].lower()


@_fn("ToLower", 1, 2, optional=frozenset({1}))
def _tolower(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    lang = _culture(ev, call, a)
    if s is None:
        return None
    if lang in ("tr", "az"):
        s = s.replace("I", "ı").replace("İ", "i")
    return "".join(_lower1(c) for c in s)


@_fn("ToUpper", 1, 2, optional=frozenset({1}))
def _toupper(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    lang = _culture(ev, call, a)
    if s is None:
        return None
    if lang in ("tr", "az"):
        s = s.replace("i", "İ").replace("ı", "I")
    return "".join(_upper1(c) for c in s)


@_fn("Word", 3)
def _word(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    s = ev.text_arg(call, a[0], 1)
    number = ev.int_arg(call, a[1], 2)
    delimiters = ev.text_arg(call, a[2], 3) or ""
    if number < 1 or s is None:
        return ""
    words = [w for w in re.split("[" + re.escape(delimiters) + "]", s) if w] if delimiters else ([s] if s else [])
    return words[number - 1] if number <= len(words) else ""


# Replace --------------------------------------------------------------------------------------------------------

def _replace_mode(call: Call, text: str) -> int:
    """Which of the five documented Replace modes the *present* arguments select (parse-time check)."""
    given = [i < len(call.args) and not isinstance(call.args[i], Empty) for i in range(7)]
    _, old, regex, group, repl, repl_attr, template = given
    if regex:
        if group and repl_attr and not repl:
            return 5
        if group and repl:
            return 4
        if repl and not group:
            return 3
    elif old:
        if template and not repl:
            return 2
        if repl and not template:
            return 1
    raise ExpressionError(
        "Replace: unsupported combination of parameters; use oldValue+replacementValue, oldValue+template, "
        "regexPattern+replacementValue, regexPattern+regexGroupName+replacementValue or "
        "regexPattern+regexGroupName+replacementAttributeName",
        call.column, text,
    )


def dotnet_regex(pattern: str) -> str:
    """Translate .NET named groups to Python: ``(?<n>…)``/``(?'n'…)`` → ``(?P<n>…)``, ``\\k<n>`` → ``(?P=n)``."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if not in_class:
                m = re.match(r"\\k<(\w+)>|\\k'(\w+)'", pattern[i:])
                if m:
                    out.append(f"(?P={m.group(1) or m.group(2)})")
                    i += m.end()
                    continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        m = re.match(r"\(\?<([A-Za-z_]\w*)>|\(\?'([A-Za-z_]\w*)'", pattern[i:])
        if m:
            out.append(f"(?P<{m.group(1) or m.group(2)}>")
            i += m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _expand_dotnet_replacement(template: str, match: re.Match[str]) -> str:
    """.NET substitutions: ``$1``, ``${name}``, ``$$``, ``$&``/``$0``, ``$` ``, ``$'``, ``$_``; else literal."""
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = template[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            j = template.find("}", i + 2)
            name = template[i + 2 : j] if j > 0 else ""
            numeric = name.isascii() and name.isdigit()
            key: str | int | None = int(name) if numeric else name if name in match.re.groupindex else None
            if j > 0 and key is not None and (not isinstance(key, int) or key <= match.re.groups):
                out.append(match.group(key) or "")
                i = j + 1
            else:
                out.append(c)
                i += 1
        elif nxt.isascii() and nxt.isdigit():
            j = i + 1
            while j < n and template[j].isdigit() and int(template[i + 1 : j + 1]) <= match.re.groups:
                j += 1
            number = int(template[i + 1 : j]) if j > i + 1 else None
            if number is not None and number <= match.re.groups:
                out.append(match.group(number) or "")
                i = j
            else:
                out.append(c)
                i += 1
        elif nxt == "&":
            out.append(match.group(0))
            i += 2
        elif nxt == "`":
            out.append(match.string[: match.start()])
            i += 2
        elif nxt == "'":
            out.append(match.string[match.end() :])
            i += 2
        elif nxt == "_":
            out.append(match.string)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


@functools.lru_cache(maxsize=512)
def _compile_cached(pattern: str) -> re.Pattern[str]:
    return re.compile(dotnet_regex(pattern))


def _compile(ev: Evaluator, call: Call, pattern: str) -> re.Pattern[str]:
    try:
        return _compile_cached(pattern)
    except re.error as exc:
        raise ev.fail(call, f"invalid regular expression {pattern!r}: {exc}") from exc


@_fn("Replace", 2, 7, optional=frozenset({1, 2, 3, 4, 5, 6}))
def _replace(ev: Evaluator, call: Call, a: list[Any]) -> Any:
    mode = _replace_mode(call, ev.text)
    args = [*a, *([None] * (7 - len(a)))]
    source = ev.text_arg(call, args[0], 1)
    old = ev.text_arg(call, args[1], 2)
    pattern = ev.text_arg(call, args[2], 3)
    group = ev.text_arg(call, args[3], 4)
    repl = ev.text_arg(call, args[4], 5)
    template = ev.text_arg(call, args[6], 7)
    if mode == 1:
        if source is None:
            return None
        if not old:
            return source
        return source.replace(old, repl or "")
    if mode == 2:
        if source is None or template is None:
            return None
        return template.replace(old, source) if old else template
    rx = _compile(ev, call, pattern or "")
    if mode in (4, 5) and (not group or group not in rx.groupindex):
        raise ev.fail(call, f"the regular expression has no group named {group!r}")
    if mode == 3:
        if source is None:
            return None
        return rx.sub(lambda m: _expand_dotnet_replacement(repl or "", m), source)
    if mode == 4:
        if source is None:
            return None
        assert group is not None
        out: list[str] = []
        last = 0
        for m in rx.finditer(source):
            start, end = m.span(group)
            if start < 0:
                continue
            out.append(source[last:start])
            out.append(repl or "")
            last = end
        out.append(source[last:])
        return "".join(out)
    # mode 5: the source wins when it has a value; otherwise extract the group from the replacement attribute
    if source:
        return source
    attr_value = ev.text_arg(call, args[5], 6)
    if attr_value is None:
        return None
    found = rx.search(attr_value)
    return found.group(group) if found and group and found.group(group) is not None else None
