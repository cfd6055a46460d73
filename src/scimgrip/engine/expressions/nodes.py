"""The parsed expression tree (immutable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Node:
    column: int  # 1-based offset of the node's first character in the expression text


@dataclass(frozen=True)
class Attr(Node):
    """``[name]``: a source attribute."""

    name: str


@dataclass(frozen=True)
class Literal(Node):
    """A string, integer, hex integer or named constant (``vbTextCompare``, ``True``, ``NULL``, ...)."""

    value: Any


@dataclass(frozen=True)
class Empty(Node):
    """An omitted positional argument: ``Replace([x], , "regex", , "", , )``."""


@dataclass(frozen=True)
class Compare(Node):
    """``left op right`` with op one of ``= <> > >= < <=`` (IIF conditions, CBool)."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call(Node):
    """``Name(arg, ...)``: a function call. ``name`` is case-sensitive."""

    name: str
    args: tuple[Node, ...]
