"""The public entry points: :func:`parse_expression`, :class:`Expression`, :func:`is_expression`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .core import IGNORE, EvalContext, ExpressionError
from .functions import Evaluator, _Drop
from .nodes import Attr, Call, Compare, Node
from .parser import parse


def _attributes(node: Node) -> set[str]:
    if isinstance(node, Attr):
        return {node.name}
    if isinstance(node, Call):
        return set().union(*(_attributes(a) for a in node.args)) if node.args else set()
    if isinstance(node, Compare):
        return _attributes(node.left) | _attributes(node.right)
    return set()


class Expression:
    """A parsed expression. Immutable; evaluate it as often as needed.

    ``text``: the source text. ``attributes``: the source attribute names it references. ``function``: the
    top-level function name (e.g. ``"SelectUniqueValue"``, ``"AssertiveAppRoleAssignmentsComplex"``) or None
    when the expression is a bare ``[attr]``/constant. ``tree``: the parsed tree.
    """

    __slots__ = ("text", "attributes", "function", "tree")

    text: str
    attributes: frozenset[str]
    function: str | None
    tree: Node

    def __init__(self, text: str, tree: Node) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "tree", tree)
        object.__setattr__(self, "attributes", frozenset(_attributes(tree)))
        object.__setattr__(self, "function", tree.name if isinstance(tree, Call) else None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Expression is immutable")

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def evaluate(self, attributes: Mapping[str, Any], ctx: EvalContext | None = None) -> Any:
        """Evaluate against one source object's attributes.

        Returns a str, int, list, dict list (roles) or None, or :data:`IGNORE` when ``IgnoreFlowIfNullOrEmpty``
        drops the attribute. Raises :class:`ExpressionError` (column of the failing call) on any evaluation
        error; the engine reports it as ``ExpressionEvaluationFailed`` for that object.
        """
        ev = Evaluator(self.text, attributes, ctx if ctx is not None else EvalContext())
        try:
            return ev.eval(self.tree)
        except _Drop:
            return IGNORE
        except ExpressionError:
            raise
        except RecursionError as exc:  # pragma: no cover - the parser bounds the depth
            raise ExpressionError("expression too deeply nested", self.tree.column, self.text) from exc


def parse_expression(text: str) -> Expression:
    """Parse an Entra expression. Raises :class:`ExpressionError` (``.column`` 1-based) on a syntax error."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a string, got {type(text).__name__}", 1, "")
    return Expression(text, parse(text))


_LOOKS_LIKE = re.compile(r"^\s*(?:\[[^\]]*\]|[A-Za-z_][A-Za-z0-9_]*\s*\()")


def is_expression(text: str) -> bool:
    """True if ``text`` looks like an expression (a function call or ``[attr]``) rather than a constant.

    Only the shape is checked; a text that looks like an expression may still fail :func:`parse_expression`.
    """
    return isinstance(text, str) and bool(_LOOKS_LIKE.match(text))
