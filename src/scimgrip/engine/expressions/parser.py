"""Hand-written recursive-descent parser for Entra attribute-mapping expressions (EXP-1).

Grammar (case-sensitive)::

    expression := operand [ OP operand ]          OP: = <> > >= < <=
    operand    := IDENT "(" [ argument { "," argument } ] ")"     function call
                | IDENT                                          named constant (vbTextCompare, True, NULL, ...)
                | "[" attribute "]" | STRING | NUMBER | HEX
    argument   := expression | <nothing>                          empty positional argument

Checks done at parse time (so a configuration is rejected when saved, EXP-4): unknown functions (with a hint when
only the case differs), argument counts, required arguments left empty, ``Switch`` pairs, ``Replace``
parameter combinations, ``SelectUniqueValue`` only at the top level, nesting depth.
"""

from __future__ import annotations

from .core import ExpressionError
from .functions import FUNCTIONS, NAMED_CONSTANTS, check_call
from .lexer import Token, tokenize
from .nodes import Attr, Call, Compare, Empty, Literal, Node

MAX_DEPTH = 100


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    def error(self, message: str, column: int) -> ExpressionError:
        return ExpressionError(message, column, self.text)

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        t = self.tokens[self.pos]
        self.pos += 1
        return t

    def describe(self, t: Token) -> str:
        if t.kind == "EOF":
            return "end of expression"
        if t.kind == "STRING":
            return "a string"
        if t.kind == "ATTR":
            return f"attribute [{t.value}]"
        return repr(str(t.value))

    def parse(self) -> Node:
        if self.tok.kind == "EOF":
            raise self.error("empty expression", 1)
        node = self.expression()
        t = self.tokens[self.pos]
        if t.kind != "EOF":
            hint = " (IIF conditions take one comparison; nest IIF for AND/OR)" if t.kind == "OP" else ""
            raise self.error(f"unexpected {self.describe(t)} after the end of the expression{hint}", t.column)
        return node

    def expression(self) -> Node:
        left = self.operand()
        if self.tok.kind == "OP":
            op = self.advance()
            right = self.operand()
            return Compare(left.column, str(op.value), left, right)
        return left

    def operand(self) -> Node:
        t = self.tok
        if t.kind == "ATTR":
            self.advance()
            return Attr(t.column, str(t.value))
        if t.kind in ("STRING", "NUMBER"):
            self.advance()
            return Literal(t.column, t.value)
        if t.kind == "IDENT":
            name = str(t.value)
            self.advance()
            if self.tok.kind == "LPAREN":
                return self.call(name, t.column)
            if name in NAMED_CONSTANTS:
                return Literal(t.column, NAMED_CONSTANTS[name])
            if name in FUNCTIONS:
                raise self.error(f"function {name} must be called with parentheses: {name}(...)", t.column)
            raise self.error(f"unknown identifier {name!r} (strings need double quotes)", t.column)
        raise self.error(f"expected a function call, [attribute], string or number, got {self.describe(t)}",
                         t.column)

    def call(self, name: str, column: int) -> Call:
        if name not in FUNCTIONS:
            folded = {f.lower(): f for f in FUNCTIONS}
            hint = f"; did you mean {folded[name.lower()]}? (function names are case-sensitive)" \
                if name.lower() in folded else ""
            raise self.error(f"unknown function {name!r}{hint}", column)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression is nested more than {MAX_DEPTH} levels deep", column)
        self.advance()  # (
        args: list[Node] = []
        if self.tok.kind == "RPAREN":
            self.advance()
        else:
            while True:
                if self.tok.kind in ("COMMA", "RPAREN"):
                    args.append(Empty(self.tok.column))
                else:
                    args.append(self.expression())
                t = self.advance()
                if t.kind == "RPAREN":
                    break
                if t.kind != "COMMA":
                    raise self.error(f"expected ',' or ')' in the arguments of {name}, got {self.describe(t)}",
                                     t.column)
        self.depth -= 1
        node = Call(column, name, tuple(args))
        check_call(node, self.text)
        return node


def _check_nesting(node: Node, text: str, top: bool) -> None:
    if isinstance(node, Call):
        if node.name == "SelectUniqueValue" and not top:
            raise ExpressionError("SelectUniqueValue must be the top-level function and cannot be nested",
                                  node.column, text)
        for a in node.args:
            _check_nesting(a, text, False)
    elif isinstance(node, Compare):
        _check_nesting(node.left, text, False)
        _check_nesting(node.right, text, False)


def parse(text: str) -> Node:
    """Parse ``text`` into a tree. Raises :class:`ExpressionError` (with the 1-based column) on any error."""
    node = _Parser(text).parse()
    _check_nesting(node, text, True)
    return node
