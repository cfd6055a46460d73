"""Entra's attribute-mapping expression language (provisioning-engine.md §6, EXP-1..EXP-4).

    >>> expr = parse_expression('Join(", ", "", [surname], [givenName])')
    >>> expr.evaluate({"givenName": "John", "surname": "Doe"})
    'Doe, John'

Syntax (EXP-1): a function call (nesting allowed), ``[attribute]``, ``"string"`` (``\\"`` and ``\\\\`` escapes;
any other backslash is kept as is), integers (``-10``), hex ``&HF7``, empty positional arguments
(``Replace([x], , "re", , "", , )``), the named constants ``vbBinaryCompare``/``vbTextCompare``, ``True``/
``False`` and ``NULL``/``Null``/``Nothing``, and one comparison ``= <> > >= < <=`` per argument (IIF, CBool).
Function names are case-sensitive; at most 10,000 characters. Every syntax error is an :class:`ExpressionError`
whose ``column`` is the 1-based character offset in the text; argument counts, required arguments, ``Switch``
pairs, ``Replace`` modes and ``SelectUniqueValue`` placement are checked at parse time.

Value model (decisions, documented here as the contract for the mapping code):

* Values are ``str``, ``int``, ``list`` (multi-valued), ``dict`` (a role from the app-role functions), ``None``
  (null). There is no Python ``bool`` in the language: **booleans are the .NET strings "True"/"False"**, as in
  Entra (``Not``, ``CBool``, ``IsNull``/``IsNullOrEmpty``/``IsPresent``/``IsString`` and comparisons all return
  them), and **``[attr]`` of a Python bool yields "True"/"False"** too, so ``Switch([accountEnabled], , "True",
  ...)`` and ``Not([IsSoftDeleted])`` behave as in Entra. Mapping code converts "True"/"False" to JSON booleans
  for boolean target attributes (``functions.as_bool`` helps).
* A missing attribute is null. Attribute lookup is exact first, then case-insensitive.
* Integers stay ``int`` (``BitAnd``, ``Count``, ``InStr``, ``DateDiff``, ``NumFromDate``, integer attributes);
  string functions accept them (``Join("", 1000, ...)`` → ``"1000..."``).
* DateTimes (``CDate``, ``Now``, ``DateAdd``, ``DateFromNum``) are :class:`~.dates.DateTimeValue` — a ``str``
  rendered ``M/d/yyyy h:mm:ss tt`` in UTC, which also carries the exact datetime in ``.dt``. Date arguments
  accept those, ISO 8601 strings (with or without offset; no offset = UTC) and LDAP generalized time.
* A function that needs one string and gets a multi-valued attribute uses its only value, or fails if it has
  several. ``Join`` expands lists; ``Count``/``Item``/``RemoveDuplicates`` take lists.
* Null handling: string transforms (``Append`` source, ``ToLower``, ``Replace``, ``Mid``, ``CDate``, ...) return
  null for a null source so nothing flows (MAP-5); ``Left``/``Word`` return ``""`` (documented); ``Join`` skips
  null and empty values (documented example); ``Coalesce`` returns the first value that is neither null nor
  empty, else ``""`` if one was empty, else null; ``Not(null)`` is "True"; ``Count(null)`` is 0; date
  functions treat an empty string like null. ``Split`` trims whitespace around each value (as Microsoft's
  ``"PermissionSetOne, PermissionSetTwo"`` example shows).
* EXP-3: ``IIF`` treats null as ``""`` (``IIF([country]="", "Other", [country])`` works — Entra's null bug is not
  reproduced); ``Switch`` compares case-sensitively and a null source matches the key ``""``. Comparisons are
  numeric when both sides are integers, otherwise ordinal (case-sensitive) strings.
* ``IgnoreFlowIfNullOrEmpty`` makes :meth:`Expression.evaluate` return :data:`IGNORE` (wherever it is nested,
  the whole target attribute is dropped). ``SelectUniqueValue`` asks ``EvalContext.is_unique`` and raises
  :class:`UniqueValueExhausted` (an ``ExpressionError``) when every candidate is taken. ``Redact`` adds its value
  to ``EvalContext.redactions``.
* ``AppRoleAssignmentsComplex``/``AssertiveAppRoleAssignmentsComplex`` return ``[{"primary": False, "type":
  "WindowsAzureActiveDirectoryRole", "display": ..., "value": ...}]`` from ``[appRoleAssignments]`` (a list of
  role values or of dicts with ``value`` and ``displayName``); the mapping picks PATCH ``add`` vs ``replace`` from
  ``Expression.function``. ``SingleAppRoleAssignment`` returns the first role's value.
* Evaluation errors (bad types, invalid regex, unparsable dates, ...) raise :class:`ExpressionError` with the
  column of the failing call; nothing else escapes ``evaluate``.
"""

from .core import IGNORE, EvalContext, ExpressionError, UniqueValueExhausted
from .dates import DateTimeValue
from .expression import Expression, is_expression, parse_expression
from .functions import FUNCTIONS, as_bool

__all__ = [
    "FUNCTIONS",
    "IGNORE",
    "DateTimeValue",
    "EvalContext",
    "Expression",
    "ExpressionError",
    "UniqueValueExhausted",
    "as_bool",
    "is_expression",
    "parse_expression",
]
