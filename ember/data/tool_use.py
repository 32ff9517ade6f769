"""Tool use: the calculator tool-call format, a safe evaluator, and synthetic conversations.

The format (Hermes/Qwen style: JSON inside tags). The assistant calls the tool with exactly

    <tool_call>{"name": "calculator", "arguments": {"expression": "123 * 456"}}</tool_call>

and nothing else in that turn. The tool's reply is a message with role "tool" whose content
is the result alone (`56088`, or `error: ...` when the expression is bad). The assistant then
answers in one fixed sentence, `The answer is 56088.` A whole training conversation:

    [{"role": "system",    "content": TOOL_SYSTEM_PROMPT},
     {"role": "user",      "content": "What is 123 times 456?"},
     {"role": "assistant", "content": '<tool_call>{"name": "calculator", "arguments": '
                                      '{"expression": "123 * 456"}}</tool_call>'},
     {"role": "tool",      "content": "56088"},
     {"role": "assistant", "content": "The answer is 56088."}]

Expressions use ASCII operators (`+ - * / // % **`, parentheses); `safe_eval` also takes
`×`, `÷`, `−`, `^` (as a power) and thousands separators (`1,234`). Questions come from two
disjoint sets of phrasings: "train" for the SFT data and "heldout" for the evaluation, so
the score measures generalisation to wordings never trained on (including the operand-order
trap "subtract {b} from {a}" = a - b).

>>> import random
>>> make_question(random.Random(0), "*")[1:]
('876 * 141', 123516)
"""

from __future__ import annotations

import ast
import json
import math
import operator
import random
import re
from pathlib import Path

from ember.core.io import atomic_write_text

TOOL_NAME = "calculator"
# Short on purpose: every training conversation carries it, and we train on CPU.
TOOL_SYSTEM_PROMPT = (
    'For arithmetic, call the calculator: <tool_call>{"name": "calculator", "arguments": '
    '{"expression": "..."}}</tool_call>. Then answer: The answer is N.'
)
OPS = ("+", "-", "*")

# ---- phrasings ------------------------------------------------------------------------
# {a} and {b} are the operands of the expression "a op b", wherever the wording puts them.
# Subtraction templates marked with "!" are word problems whose result must not be negative
# (the operands are swapped when b > a); the mark is not part of the text.

TRAIN_PHRASINGS: dict[str, tuple[str, ...]] = {
    "+": (
        "What is {a} plus {b}?",
        "Compute {a} + {b}.",
        "Add {a} and {b}.",
        "What is the sum of {a} and {b}?",
        "I bought {a} apples and then {b} more. How many apples do I have?",
        "A library has {a} books and receives {b} new ones. How many books does it have now?",
    ),
    "-": (
        "What is {a} minus {b}?",
        "Compute {a} - {b}.",
        "What is the difference {a} - {b}?",
        "What do you get if you take {b} away from {a}?",
        "!I had {a} dollars and spent {b}. How many dollars are left?",
        "!A tank holds {a} liters and {b} liters leak out. How many liters remain?",
    ),
    "*": (
        "What is {a} times {b}?",
        "Compute {a} * {b}.",
        "Multiply {a} by {b}.",
        "What is the product of {a} and {b}?",
        "A box holds {a} pencils. How many pencils are in {b} boxes?",
        "Each ticket costs {a} dollars. How much do {b} tickets cost?",
    ),
}

HELDOUT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "+": (
        "How much is {a} added to {b}?",
        "Calculate the total of {a} and {b}, please.",
        "A farmer picked {a} pears on Monday and {b} pears on Tuesday. How many pears in total?",
        "{a} + {b} = ?",
    ),
    "-": (
        "Please subtract {b} from {a}.",
        "!How much greater is {a} than {b}?",
        "!A school had {a} students and {b} of them graduated. How many students stayed?",
        "{a} - {b} = ?",
    ),
    "*": (
        "{a} times {b} equals what?",
        "Find {a} multiplied by {b}.",
        "A theater has {a} rows with {b} seats each. How many seats are there?",
        "{a} * {b} = ?",
    ),
}
PHRASINGS = {"train": TRAIN_PHRASINGS, "heldout": HELDOUT_PHRASINGS}
ANSWER_TEMPLATE = "The answer is {}."


# ---- the safe evaluator ---------------------------------------------------------------

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


# ---- questions and conversations ------------------------------------------------------


def _operand(rng: random.Random, lo_digits: int, hi_digits: int) -> int:
    digits = rng.randint(lo_digits, hi_digits)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def make_question(rng: random.Random, op: str | None = None, phrasing_set: str = "train") -> tuple[str, str, int]:
    """(question text, expression, answer) for one random a op b.

    + and -: 2-4 digit operands (a - b may be negative); *: 2-3 digits times 2-3 digits.

    >>> make_question(random.Random(0), "-", "heldout")
    ('A school had 876 students and 141 of them graduated. How many students stayed?', '876 - 141', 735)
    """
    phrasings = _phrasings(phrasing_set)
    op = rng.choice(OPS) if op is None else op
    if op not in OPS:
        raise ValueError(f"unknown operator {op!r} (known: {', '.join(OPS)})")
    a, b = (_operand(rng, 2, 3), _operand(rng, 2, 3)) if op == "*" else (_operand(rng, 2, 4), _operand(rng, 2, 4))
    template = rng.choice(phrasings[op])
    if template.startswith("!"):
        template = template[1:]
        a, b = max(a, b), min(a, b)
    expression = f"{a} {op} {b}"
    return template.format(a=a, b=b), expression, safe_eval(expression)


def _phrasings(phrasing_set: str) -> dict[str, tuple[str, ...]]:
    if phrasing_set not in PHRASINGS:
        raise ValueError(f"unknown phrasing_set {phrasing_set!r} (known: {', '.join(PHRASINGS)})")
    return PHRASINGS[phrasing_set]


def tool_call_text(expression: str) -> str:
    """The assistant's whole tool-calling turn for an expression.

    >>> tool_call_text("2 + 2")
    '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call>'
    """
    call = {"name": TOOL_NAME, "arguments": {"expression": expression}}
    return f"<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>"


def make_conversation(rng: random.Random, phrasing_set: str = "train") -> dict:
    """{"messages": [system, user, assistant tool call, tool result, assistant answer]}."""
    question, expression, answer = make_question(rng, None, phrasing_set)
    result = format_number(answer)
    return {"messages": [
        {"role": "system", "content": TOOL_SYSTEM_PROMPT},
        {"role": "user", "content": question},
        {"role": "assistant", "content": tool_call_text(expression)},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": ANSWER_TEMPLATE.format(result)},
    ]}


def write_tool_use_jsonl(path: str | Path, n: int, seed: int = 0, phrasing_set: str = "train") -> Path:
    """Write n conversations, one JSON object a line, atomically (the SFT recipe's input).

    >>> write_tool_use_jsonl("data/tool_use.jsonl", 2000, seed=0)  # doctest: +SKIP
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = random.Random(seed)
    lines = [json.dumps(make_conversation(rng, phrasing_set), ensure_ascii=False) for _ in range(n)]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def make_eval_set(n: int = 100, seed: int = 1234) -> list[dict]:
    """n questions in the held-out phrasings, the three operators in turn.

    >>> make_eval_set(3)[0].keys()
    dict_keys(['question', 'answer'])
    """
    rng = random.Random(seed)
    items = []
    for k in range(n):
        question, _, answer = make_question(rng, OPS[k % len(OPS)], "heldout")
        items.append({"question": question, "answer": answer})
    return items


def default_eval_set() -> list[dict]:
    """The fixed evaluation set: 100 held-out questions, seed 1234."""
    return make_eval_set(100, 1234)
