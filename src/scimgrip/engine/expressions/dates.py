"""Date handling for the expression functions (CDate, DateAdd, DateDiff, DateFromNum, FormatDateTime, Now,
NumFromDate).

Entra renders every DateTime as ``M/d/yyyy h:mm:ss tt`` in UTC (invariant culture). :class:`DateTimeValue` is a
``str`` holding exactly that rendering plus the full-precision aware datetime in ``.dt``, so date functions can
be chained without losing sub-second precision while every consumer still sees a plain string.

``FormatDateTime`` uses .NET *custom* date and time format strings; :func:`dotnet_parse` and
:func:`dotnet_format` translate them (invariant culture: ``/`` and ``:`` are literal, English month and day names,
``AM``/``PM``).
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "DateTimeValue",
    "add_interval",
    "diff_interval",
    "dotnet_format",
    "dotnet_parse",
    "filetime_to_datetime",
    "datetime_to_filetime",
    "format_entra",
    "parse_datetime",
]

_MONTHS = [calendar.month_name[i] for i in range(1, 13)]
_MONTHS_ABBR = [calendar.month_abbr[i] for i in range(1, 13)]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_DAYS_ABBR = [d[:3] for d in _DAYS]
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)


def _as_utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def format_entra(dt: datetime) -> str:
    """``M/d/yyyy h:mm:ss tt`` in UTC, e.g. ``3/16/2020 7:00:00 AM``."""
    u = _as_utc(dt)
    hour12 = u.hour % 12 or 12
    return f"{u.month}/{u.day}/{u.year} {hour12}:{u.minute:02d}:{u.second:02d} {'AM' if u.hour < 12 else 'PM'}"


class DateTimeValue(str):
    """A DateTime flowing through an expression: the string is Entra's rendering, ``.dt`` the UTC datetime."""

    dt: datetime

    def __new__(cls, dt: datetime) -> DateTimeValue:
        u = _as_utc(dt)
        obj = super().__new__(cls, format_entra(u))
        obj.dt = u
        return obj


_ISO = re.compile(
    r"""^(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})
        (?:[T\s](?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,7}))?)?)?
        \s*(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?$""",
    re.VERBOSE | re.IGNORECASE,
)
_US = re.compile(
    r"""^(?P<mo>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})
        (?:\s+(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,7}))?)?\s*(?P<tt>AM|PM)?)?
        \s*(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?$""",
    re.VERBOSE | re.IGNORECASE,
)
_GENERALIZED = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})(?P<d>\d{2})(?P<h>\d{2})(?P<mi>\d{2})(?P<s>\d{2})?(?:\.(?P<f>\d{1,7}))?"
    r"(?P<tz>Z|[+-]\d{4})?$",
    re.IGNORECASE,
)


def _tz(text: str | None) -> timezone:
    if not text or text.upper() == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) > 2 else 0
    if hours > 14 or minutes > 59:
        raise ValueError(f"invalid UTC offset {text!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_datetime(value: str) -> datetime:
    """Parse a date/time string the way Entra's ``CDate`` accepts it and return it in UTC.

    Accepted: ISO 8601 (``2009-06-15T01:45:30-07:00``, ``2020-03-16-07:00``, ``2021-08-24``, ``Z``, fractions),
    Entra's own rendering ``M/d/yyyy h:mm:ss tt`` (US order), and LDAP generalized time (``20150123105347.1Z``).
    A value without an offset is taken as UTC (Entra's service runs in UTC). Raises ``ValueError``.
    """
    if isinstance(value, DateTimeValue):
        return value.dt
    text = value.strip()
    m = _ISO.match(text) or _US.match(text) or _GENERALIZED.match(text)
    if m is None:
        raise ValueError(f"not a recognised date/time: {value!r}")
    g = m.groupdict()
    hour = int(g["h"] or 0)
    tt = g.get("tt")
    if tt:
        if not 1 <= hour <= 12:
            raise ValueError(f"hour out of range for AM/PM: {value!r}")
        hour = hour % 12 + (12 if tt.upper() == "PM" else 0)
    frac = g["f"] or ""
    micro = int((frac + "000000")[:6]) if frac else 0
    dt = datetime(
        int(g["y"]), int(g["mo"]), int(g["d"]), hour, int(g["mi"] or 0), int(g["s"] or 0), micro, tzinfo=_tz(g["tz"])
    )
    return dt.astimezone(UTC)


def _add_months(dt: datetime, months: int) -> datetime:
    """.NET ``AddMonths``: the day is clamped to the length of the target month."""
    total = dt.year * 12 + (dt.month - 1) + months
    year, month = divmod(total, 12)
    if not 1 <= year <= 9999:
        raise OverflowError("date out of range")
    day = min(dt.day, calendar.monthrange(year, month + 1)[1])
    return dt.replace(year=year, month=month + 1, day=day)


_INTERVALS = {"yyyy", "q", "m", "y", "d", "w", "ww", "h", "n", "s"}


def add_interval(interval: str, number: int, dt: datetime) -> datetime:
    """``DateAdd``: intervals ``yyyy q m y d w ww h n s`` (VB semantics; ``y`` and ``w`` are days)."""
    if interval == "yyyy":
        return _add_months(dt, 12 * number)
    if interval == "q":
        return _add_months(dt, 3 * number)
    if interval == "m":
        return _add_months(dt, number)
    if interval in ("d", "y", "w"):
        return dt + timedelta(days=number)
    if interval == "ww":
        return dt + timedelta(weeks=number)
    if interval == "h":
        return dt + timedelta(hours=number)
    if interval == "n":
        return dt + timedelta(minutes=number)
    if interval == "s":
        return dt + timedelta(seconds=number)
    raise ValueError(f"unknown interval {interval!r} (expected one of yyyy, m, d, ww, h, n, s)")


def _fix(x: float) -> int:
    return int(x)  # truncation toward zero, like VB's Fix()


def diff_interval(interval: str, d1: datetime, d2: datetime) -> int:
    """``DateDiff`` with VB.NET ``DateAndTime.DateDiff`` semantics: ``d2 - d1`` in whole units (truncated);
    ``m``, ``q``, ``yyyy`` count calendar boundaries; ``ww`` counts weeks between the preceding Saturdays
    (first day of week Sunday), ``w`` whole 7-day periods."""
    d1, d2 = _as_utc(d1), _as_utc(d2)
    seconds = (d2 - d1).total_seconds()
    if interval in ("d", "y"):
        return _fix(seconds / 86400)
    if interval == "h":
        return _fix(seconds / 3600)
    if interval == "n":
        return _fix(seconds / 60)
    if interval == "s":
        return _fix(seconds)
    if interval == "w":
        return _fix(_fix(seconds / 86400) / 7)
    if interval == "ww":
        a = d1 - timedelta(days=d1.isoweekday() % 7 + 1)
        b = d2 - timedelta(days=d2.isoweekday() % 7 + 1)
        return _fix(_fix((b - a).total_seconds() / 86400) / 7)
    if interval == "m":
        return (d2.year - d1.year) * 12 + (d2.month - d1.month)
    if interval == "q":
        return (d2.year - d1.year) * 4 + ((d2.month - 1) // 3 - (d1.month - 1) // 3)
    if interval == "yyyy":
        return d2.year - d1.year
    raise ValueError(f"unknown interval {interval!r} (expected one of yyyy, m, d, ww, h, n, s)")


def filetime_to_datetime(value: int) -> datetime:
    """AD FILETIME (100-ns ticks since 1601-01-01 UTC) → aware UTC datetime."""
    return _FILETIME_EPOCH + timedelta(microseconds=value // 10)


def datetime_to_filetime(dt: datetime) -> int:
    """Aware/naive (UTC) datetime → AD FILETIME integer."""
    delta = _as_utc(dt) - _FILETIME_EPOCH
    return (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


# --- .NET custom date and time format strings ------------------------------------------------------------------

_LETTERS = "yMdHhmsfFtzKg"


def _tokens(fmt: str) -> list[tuple[str, str]]:
    """Split a .NET custom format into ``("spec", "yyyy")`` and ``("lit", "-")`` tokens."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(fmt)
    while i < n:
        c = fmt[i]
        if c in ("'", '"'):
            j = fmt.find(c, i + 1)
            if j < 0:
                raise ValueError(f"unterminated quoted literal in date format {fmt!r}")
            out.append(("lit", fmt[i + 1 : j]))
            i = j + 1
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError(f"dangling escape in date format {fmt!r}")
            out.append(("lit", fmt[i + 1]))
            i += 2
        elif c == "%" and i + 1 < n and fmt[i + 1] in _LETTERS:
            out.append(("spec", fmt[i + 1]))
            i += 2
        elif c in _LETTERS:
            j = i
            while j < n and fmt[j] == c:
                j += 1
            out.append(("spec", fmt[i:j]))
            i = j
        else:
            out.append(("lit", c))
            i += 1
    return out


def _spec_regex(spec: str) -> str:
    c, k = spec[0], len(spec)
    if c == "y":
        if k == 1:
            return r"(?P<y>\d{1,2})"
        if k == 2:
            return r"(?P<y>\d{2})"
        return r"(?P<Y>\d{3,4})" if k == 3 else rf"(?P<Y>\d{{{k}}})"
    if c == "M":
        if k == 1:
            return r"(?P<M>\d{1,2})"
        if k == 2:
            return r"(?P<M>\d{2})"
        if k == 3:
            return "(?P<Mabbr>" + "|".join(_MONTHS_ABBR) + ")"
        return "(?P<Mname>" + "|".join(_MONTHS) + ")"
    if c == "d":
        if k == 1:
            return r"(?P<d>\d{1,2})"
        if k == 2:
            return r"(?P<d>\d{2})"
        if k == 3:
            return "(?:" + "|".join(_DAYS_ABBR) + ")"
        return "(?:" + "|".join(_DAYS) + ")"
    if c in "Hh":
        name = "H" if c == "H" else "h"
        return rf"(?P<{name}>\d{{1,2}})" if k == 1 else rf"(?P<{name}>\d{{2}})"
    if c in "ms":
        name = "mi" if c == "m" else "s"
        return rf"(?P<{name}>\d{{1,2}})" if k == 1 else rf"(?P<{name}>\d{{2}})"
    if c == "f":
        return rf"(?P<f>\d{{{k}}})"
    if c == "F":
        return rf"(?P<f>\d{{0,{k}}})"
    if c == "t":
        return "(?P<tt>[AP])" if k == 1 else "(?P<tt>AM|PM)"
    if c == "z":
        if k == 1:
            return r"(?P<z>[+-]\d{1,2})"
        if k == 2:
            return r"(?P<z>[+-]\d{2})"
        return r"(?P<z>[+-]\d{2}:\d{2})"
    if c == "K":
        return r"(?P<z>Z|[+-]\d{2}:\d{2})?"
    if c == "g":
        return r"(?:A\.D\.|AD)"
    raise ValueError(f"unsupported format specifier {spec!r}")


def dotnet_parse(value: str, fmt: str, *, trim: bool = True) -> datetime:
    """``DateTime.ParseExact`` with a .NET custom format (invariant culture).

    A parsed offset (``z``/``zz``/``zzz``/``K``) converts the result to UTC, as .NET's ``RoundtripKind`` does on
    a UTC host; without an offset the result is naive. Raises ``ValueError``.
    """
    if not fmt:
        raise ValueError("empty input format")
    parts: list[str] = []
    seen: set[str] = set()
    for kind, tok in _tokens(fmt):
        if kind == "lit":
            parts.append(re.escape(tok))
            continue
        rx = _spec_regex(tok)
        for name in re.findall(r"\?P<(\w+)>", rx):
            if name in seen:  # a field given twice: the second occurrence must just match the shape
                rx = rx.replace(f"?P<{name}>", "?:")
            seen.add(name)
        parts.append(rx)
    text = value.strip() if trim else value
    m = re.fullmatch("".join(parts), text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"{value!r} does not match the date format {fmt!r}")
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    year = 1
    if "Y" in g:
        year = int(g["Y"])
    elif "y" in g:
        yy = int(g["y"])
        year = 2000 + yy if yy < 50 else 1900 + yy  # .NET TwoDigitYearMax = 2049
    month = 1
    if "M" in g:
        month = int(g["M"])
    elif "Mabbr" in g:
        month = [a.lower() for a in _MONTHS_ABBR].index(g["Mabbr"].lower()) + 1
    elif "Mname" in g:
        month = [a.lower() for a in _MONTHS].index(g["Mname"].lower()) + 1
    day = int(g.get("d", 1))
    if "H" in g:
        hour = int(g["H"])
    elif "h" in g:
        hour = int(g["h"])
        if not 1 <= hour <= 12:
            raise ValueError(f"12-hour clock value out of range in {value!r}")
        hour %= 12
    else:
        hour = 0
    if "tt" in g:
        pm = g["tt"].upper().startswith("P")
        if "H" in g:
            if (hour >= 12) != pm:
                raise ValueError(f"AM/PM designator contradicts the hour in {value!r}")
        else:
            hour = hour % 12 + (12 if pm else 0)
    frac = g.get("f", "")
    micro = int((frac + "000000")[:6]) if frac else 0
    dt = datetime(year, month, day, hour, int(g.get("mi", 0)), int(g.get("s", 0)), micro)
    if "z" in g:
        z = g["z"]
        if z.upper() == "Z":
            tz = UTC
        else:
            sign = -1 if z[0] == "-" else 1
            hh, _, mm = z[1:].partition(":")
            tz = timezone(sign * timedelta(hours=int(hh), minutes=int(mm or 0)))
        dt = dt.replace(tzinfo=tz).astimezone(UTC)
    return dt


def dotnet_format(dt: datetime, fmt: str) -> str:
    """``DateTime.ToString(fmt, InvariantCulture)`` for a .NET custom format. Raises ``ValueError``."""
    if not fmt:
        raise ValueError("empty output format")
    out: list[str] = []
    for kind, tok in _tokens(fmt):
        if kind == "lit":
            out.append(tok)
            continue
        c, k = tok[0], len(tok)
        if c == "y":
            out.append(str(dt.year % 100) if k == 1 else f"{dt.year % 100:02d}" if k == 2 else f"{dt.year:0{k}d}")
        elif c == "M":
            out.append(
                str(dt.month) if k == 1 else f"{dt.month:02d}" if k == 2
                else _MONTHS_ABBR[dt.month - 1] if k == 3 else _MONTHS[dt.month - 1]
            )
        elif c == "d":
            out.append(
                str(dt.day) if k == 1 else f"{dt.day:02d}" if k == 2
                else _DAYS_ABBR[dt.weekday()] if k == 3 else _DAYS[dt.weekday()]
            )
        elif c == "H":
            out.append(str(dt.hour) if k == 1 else f"{dt.hour:02d}")
        elif c == "h":
            h12 = dt.hour % 12 or 12
            out.append(str(h12) if k == 1 else f"{h12:02d}")
        elif c == "m":
            out.append(str(dt.minute) if k == 1 else f"{dt.minute:02d}")
        elif c == "s":
            out.append(str(dt.second) if k == 1 else f"{dt.second:02d}")
        elif c in "fF":
            if k > 7:
                raise ValueError(f"too many fraction digits in {tok!r}")
            digits = f"{dt.microsecond:06d}0"[:k]
            out.append(digits if c == "f" else digits.rstrip("0"))
        elif c == "t":
            tt = "AM" if dt.hour < 12 else "PM"
            out.append(tt[0] if k == 1 else tt)
        elif c in "zK":
            off = dt.utcoffset() if dt.tzinfo is not None else timedelta(0)
            if c == "K" and dt.tzinfo is None:
                continue
            assert off is not None
            total = int(off.total_seconds() // 60)
            sign = "-" if total < 0 else "+"
            hh, mm = divmod(abs(total), 60)
            if c == "K":
                out.append("Z" if total == 0 else f"{sign}{hh:02d}:{mm:02d}")
            else:
                out.append(f"{sign}{hh}" if k == 1 else f"{sign}{hh:02d}" if k == 2 else f"{sign}{hh:02d}:{mm:02d}")
        elif c == "g":
            out.append("A.D.")
        else:  # pragma: no cover - _tokens only yields known letters
            raise ValueError(f"unsupported format specifier {tok!r}")
    return "".join(out)
