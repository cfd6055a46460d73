"""Shared vocabulary of the expression package: the error type, the IGNORE sentinel and the evaluation context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final


class ExpressionError(ValueError):
    """A syntax or evaluation error in an expression.

    ``message`` is the human-readable reason, ``column`` the 1-based character offset in ``text`` (the whole
    expression text; newlines count as one character) of the offending token or of the failing function call.
    ``str(error)`` is ``"column N: message"``.
    """

    def __init__(self, message: str, column: int, text: str = "") -> None:
        super().__init__(f"column {column}: {message}")
        self.message = message
        self.column = column
        self.text = text

    def __str__(self) -> str:
        return f"column {self.column}: {self.message}"


class UniqueValueExhausted(ExpressionError):
    """``SelectUniqueValue``: every candidate is already taken in the target (Entra escrows the object)."""


class _Ignore:
    """Type of the :data:`IGNORE` sentinel."""

    _instance: _Ignore | None = None

    def __new__(cls) -> _Ignore:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "IGNORE"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "IGNORE"


IGNORE: Final = _Ignore()
"""Returned by :meth:`Expression.evaluate` when ``IgnoreFlowIfNullOrEmpty`` drops the target attribute."""


@dataclass(frozen=True)
class EvalContext:
    """Per-evaluation environment.

    ``now``: fixed clock (tests); default: the current UTC time. Naive datetimes are taken as UTC.
    ``is_unique``: ``SelectUniqueValue`` asks it whether a candidate value is still free in the target; without
    it the first non-empty candidate wins.
    ``redactions``: ``Redact()`` adds the string form of every value it passes through, so logs can mask them.
    """

    now: datetime | None = None
    is_unique: Callable[[str], bool] | None = None
    redactions: set[str] = field(default_factory=set)
