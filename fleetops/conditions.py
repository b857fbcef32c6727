"""Success/failure conditions of analysis metrics: a small, safe subset of Argo's ``expr``.

The language (parsed here by recursive descent, never ``eval``'d): ``result <op> <number>`` with
``<`` ``<=`` ``>`` ``>=`` ``==`` ``!=`` (the number may come first), ``result[0]`` as a synonym of
``result`` (Argo's Prometheus provider returns a vector, so Argo templates often index it),
combined with ``and``/``&&`` (binds tighter) and ``or``/``||``, with parentheses. Comparisons with
NaN are false, as in Go.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn


class ConditionError(ValueError):
    """A condition is not in the supported language; the message says where and why."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<result>result\b(?:\s*\[\s*(?P<idx>\d+)\s*\])?)"
    r"|(?P<op><=|>=|==|!=|<|>)|(?P<logic>&&|\|\||and\b|or\b)|(?P<paren>[()]))"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_Node = tuple[Any, ...]
"""``("or"|"and", left, right)`` or ``("cmp", op, lhs, rhs)``; a ``None`` operand is ``result``."""


@dataclass(frozen=True)
class Condition:
    """A parsed condition; ``evaluate(value)`` says whether it holds for ``result = value``."""

    text: str
    tree: _Node

    def evaluate(self, value: float) -> bool:
        """Evaluate with ``result`` bound to ``value``."""
        return _eval(self.tree, value)


def _eval(node: _Node, x: float) -> bool:
    if node[0] == "or":
        return _eval(node[1], x) or _eval(node[2], x)
    if node[0] == "and":
        return _eval(node[1], x) and _eval(node[2], x)
    _, op, a, b = node
    return _OPS[op](x if a is None else a, x if b is None else b)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0
        self.tokens: list[tuple[str, str | float | None, int]] = []
        while text[self.pos :].strip():
            m = _TOKEN.match(text, self.pos)
            if m is None:
                rest = text[self.pos :].lstrip()
                self._fail(f"unexpected {rest[:12]!r}", len(text) - len(rest))
            assert m.lastgroup is not None
            kind = "result" if m.group("result") else m.lastgroup
            col = m.start(kind)
            if kind == "result" and m.group("idx") not in (None, "0"):
                self._fail("only result[0] exists (a measurement is one value)", col)
            value: str | float | None = m.group(kind)
            if kind == "num":
                value = float(m.group("num"))
            elif kind == "logic":
                value = {"&&": "and", "||": "or"}.get(str(value), value)
            self.tokens.append((kind, value, col))
            self.pos = m.end()
        self.i = 0

    def _fail(self, why: str, col: int) -> NoReturn:
        raise ConditionError(
            f"{why} at column {col + 1} of {self.text!r}; "
            "write conditions like 'result < 0.05' or 'result >= 0.9 and result[0] < 2'"
        )

    def _peek(self) -> tuple[str, str | float | None, int]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", None, len(self.text))

    def _take(self, kind: str, what: str, value: str | None = None) -> str | float | None:
        tok = self._peek()
        if tok[0] != kind or (value is not None and tok[1] != value):
            self._fail(f"expected {what}, found {tok[1] if tok[0] != 'end' else 'the end'}", tok[2])
        self.i += 1
        return tok[1]

    def parse(self) -> _Node:
        node = self._binary("or")
        self._take("end", "'and', 'or' or the end")
        return node

    def _binary(self, word: str) -> _Node:
        sub = (lambda: self._binary("and")) if word == "or" else self._atom
        node = sub()
        while self._peek()[:2] == ("logic", word):
            self.i += 1
            node = (word, node, sub())
        return node

    def _atom(self) -> _Node:
        if self._peek()[:2] == ("paren", "("):
            self.i += 1
            node = self._binary("or")
            self._take("paren", "')'", ")")
            return node
        a, col = self._operand(), self._peek()[2]
        op = self._take("op", "a comparison (< <= > >= == !=)")
        b = self._operand()
        if a is not None and b is not None:
            self._fail("a comparison needs 'result' on one side", col)
        return ("cmp", op, a, b)

    def _operand(self) -> float | None:
        kind, value, col = self._peek()
        if kind not in ("num", "result"):
            self._fail(f"expected 'result' or a number, found {value or 'the end'}", col)
        self.i += 1
        return value if isinstance(value, float) else None


@lru_cache(maxsize=256)
def parse_condition(text: str) -> Condition:
    """Parse a success/failure condition (see the module docstring for the language).

    Raises:
        ConditionError: the text is not a valid condition; the message says where.
    """
    if not text.strip():
        raise ConditionError("a condition cannot be empty; omit it instead")
    return Condition(text, _Parser(text).parse())
