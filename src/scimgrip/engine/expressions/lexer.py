"""Tokenizer for Entra attribute-mapping expressions (EXP-1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .core import ExpressionError

MAX_LENGTH = 10_000
"""Entra rejects expressions longer than 10,000 characters [E-KNOWN]."""

TokenKind = Literal["IDENT", "ATTR", "STRING", "NUMBER", "LPAREN", "RPAREN", "COMMA", "OP", "EOF"]

_OPERATORS = ("<>", "<=", ">=", "=", "<", ">")
_WHITESPACE = " \t\r\n\f\v\u00a0"


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    value: str | int
    column: int  # 1-based


def _is_ident_start(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def _is_ident_char(c: str) -> bool:
    return _is_ident_start(c) or _is_digit(c)


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens. Raises :class:`ExpressionError` with the column of the offending character.

    * ``[name]``: attribute reference (any characters except ``]``; surrounding spaces trimmed).
    * ``"..."``: string; ``\\"`` and ``\\\\`` are escapes, any other backslash is kept literally (so regular
      expressions such as ``"\\d+"`` survive either spelling).
    * integers (optionally negative), hex ``&HFF``; identifiers; ``( ) ,``; ``= <> > >= < <=``.
    """
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters", MAX_LENGTH + 1, text)
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        col = i + 1
        if c in _WHITESPACE:
            i += 1
        elif c == "(":
            tokens.append(Token("LPAREN", "(", col))
            i += 1
        elif c == ")":
            tokens.append(Token("RPAREN", ")", col))
            i += 1
        elif c == ",":
            tokens.append(Token("COMMA", ",", col))
            i += 1
        elif c == "[":
            j = text.find("]", i + 1)
            if j < 0:
                raise ExpressionError("unterminated attribute reference: missing ']'", col, text)
            name = text[i + 1 : j].strip()
            if not name:
                raise ExpressionError("empty attribute name '[]'", col, text)
            if "[" in name:
                raise ExpressionError("'[' inside an attribute reference", col + 1 + text[i + 1 : j].index("["), text)
            tokens.append(Token("ATTR", name, col))
            i = j + 1
        elif c == "]":
            raise ExpressionError("unexpected ']'", col, text)
        elif c == '"':
            buf: list[str] = []
            j = i + 1
            while True:
                if j >= n:
                    raise ExpressionError('unterminated string: missing closing \'"\'', col, text)
                ch = text[j]
                if ch == "\\" and j + 1 < n and text[j + 1] in '"\\':
                    buf.append(text[j + 1])
                    j += 2
                elif ch == '"':
                    break
                else:
                    buf.append(ch)
                    j += 1
            tokens.append(Token("STRING", "".join(buf), col))
            i = j + 1
        elif c == "&":
            if i + 1 < n and text[i + 1] in "Hh":
                j = i + 2
                while j < n and text[j] in "0123456789abcdefABCDEF":
                    j += 1
                if j == i + 2:
                    raise ExpressionError("hex literal '&H' needs at least one hex digit", col, text)
                if j < n and _is_ident_char(text[j]):
                    raise ExpressionError(f"invalid character {text[j]!r} in hex literal", j + 1, text)
                if j - (i + 2) > 64:
                    raise ExpressionError("hex literal is too long", col, text)
                tokens.append(Token("NUMBER", int(text[i + 2 : j], 16), col))
                i = j
            else:
                raise ExpressionError("'&' must start a hex literal such as &HFF", col, text)
        elif _is_digit(c) or (c == "-" and i + 1 < n and _is_digit(text[i + 1])):
            j = i + 1
            while j < n and _is_digit(text[j]):
                j += 1
            if j < n and _is_ident_char(text[j]):
                raise ExpressionError(f"invalid character {text[j]!r} in number", j + 1, text)
            if j - i > 40:
                raise ExpressionError("integer literal is too long", col, text)
            tokens.append(Token("NUMBER", int(text[i:j]), col))
            i = j
        elif _is_ident_start(c):
            j = i + 1
            while j < n and _is_ident_char(text[j]):
                j += 1
            tokens.append(Token("IDENT", text[i:j], col))
            i = j
        else:
            for op in _OPERATORS:
                if text.startswith(op, i):
                    tokens.append(Token("OP", op, col))
                    i += len(op)
                    break
            else:
                raise ExpressionError(f"unexpected character {c!r}", col, text)
    tokens.append(Token("EOF", "", n + 1))
    return tokens
