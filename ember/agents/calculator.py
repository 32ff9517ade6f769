"""The calculator: a safe arithmetic evaluator (never Python's eval) and the tool that wraps it.

>>> calculator("123 * 456")
'56088'
"""

from __future__ import annotations

import ast
import math
import operator
import re

from ember.agents.registry import tool

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e30
_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def safe_eval(expression: str) -> int | float:
    """The value of an arithmetic expression, never through Python's eval: numbers, + - * /
    // % ** (exponent at most 100), unary +/-, parentheses; every value below 1e30 in size.
    Anything else (names, calls, attributes, strings) is a ValueError saying why.

    >>> safe_eval("1,234 × (2 − 5)")
    -3702
    """
    if not isinstance(expression, str):
        raise ValueError(f"the expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is {len(expression)} characters long (at most {MAX_EXPRESSION_CHARS})")
    text = expression.replace("×", "*").replace("÷", "/").replace("−", "-").replace("^", "**")
    text = _THOUSANDS.sub("", text).strip()
    if not text:
        raise ValueError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    return _eval_node(tree.body)


def _eval_node(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"only numbers are allowed, not {v!r}")
        return _bounded(v)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"the exponent {right} is too large (at most {MAX_EXPONENT})")
        try:
            value = _BINOPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("the result is too large") from None
        if isinstance(value, complex):
            raise ValueError("the result is not a real number")
        return _bounded(value)
    raise ValueError(f"not allowed in an arithmetic expression: {_describe(node)}")


def _bounded(v: int | float) -> int | float:
    if isinstance(v, float) and not math.isfinite(v) or abs(v) >= MAX_MAGNITUDE:
        raise ValueError(f"the value is too large (at most {MAX_MAGNITUDE:.0e} in size)")
    return v


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{node.attr})"
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    return f"a {type(node).__name__} expression"


def format_number(v: int | float) -> str:
    """A result as the tool prints it: integers plainly, floats to 12 significant digits.

    >>> format_number(56088), format_number(10 / 4), format_number(6 / 3)
    ('56088', '2.5', '2')
    """
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v) if isinstance(v, int) else format(v, ".12g")



@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % ** and parentheses).

    Args:
        expression: the arithmetic, e.g. "123 * 456".
    """
    return format_number(safe_eval(expression))
