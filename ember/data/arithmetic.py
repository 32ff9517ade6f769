"""Arithmetic questions with checkable answers: the prompt set of `ember grpo`, and the
verifiers that score a completion against a row.

A row is {"question", "expression", "answer"}; the answer is computed by the calculator's
own evaluator (ember.data.tool_use.safe_eval), so the question and its check cannot drift.
Training and held-out rows are pure functions of a seed (and the step), and a step never
draws a held-out question.
"""

from __future__ import annotations

import random
import re

from ember.data.tool_use import safe_eval

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def arithmetic_row(rng: random.Random, ops: list[str], digits: int = 2) -> dict:
    """One question on two `digits`-digit operands, answered without tools.

    >>> arithmetic_row(random.Random(0), ["+"], digits=3)["question"]
    'What is 876 + 530? Answer with just the number.'
    """
    op = rng.choice(ops)
    lo, hi = (1 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    expression = f"{a} {op} {b}"
    question = f"What is {expression}? Answer with just the number."
    return {"question": question, "expression": expression, "answer": safe_eval(expression)}


def heldout_rows(n: int, ops: list[str], digits: int, seed: int) -> list[dict]:
    """`n` distinct questions for evaluation, drawn from their own seeded stream.

    >>> [r["expression"] for r in heldout_rows(2, ["+"], 1, seed=0)]
    ['3 + 6', '7 + 6']
    """
    rng = random.Random(f"grpo-eval-{seed}")
    rows, seen = [], set()
    while len(rows) < n:
        row = arithmetic_row(rng, ops, digits)
        if row["expression"] not in seen:
            seen.add(row["expression"])
            rows.append(row)
    return rows


def step_rows(
    n: int, ops: list[str], digits: int, seed: int, step: int, exclude: set[str]
) -> list[dict]:
    """The step's `n` questions (a pure function of seed and step), none of them in `exclude`.

    >>> [r["expression"] for r in step_rows(2, ["-"], 1, seed=0, step=5, exclude=set())]
    ['9 - 8', '6 - 9']
    >>> [r["expression"] for r in step_rows(2, ["-"], 1, seed=0, step=5, exclude={"9 - 8"})]
    ['6 - 9', '1 - 5']
    """
    rng = random.Random(f"grpo-train-{seed}-{step}")
    rows = []
    while len(rows) < n:
        row = arithmetic_row(rng, ops, digits)
        if row["expression"] not in exclude:
            rows.append(row)
    return rows


def exact_match_reward(row: dict, completion: str) -> float:
    """1.0 when the last number in the completion equals row["answer"], else 0.0.

    >>> exact_match_reward({"answer": 81}, "23 + 58 = 81.")
    1.0
    """
    numbers = _NUMBER.findall(completion)
    if not numbers:
        return 0.0
    return 1.0 if float(numbers[-1].replace(",", "")) == float(row["answer"]) else 0.0


def format_reward(row: dict, completion: str, max_chars: int = 12) -> float:
    """0.2 when the completion is just a number (the prompt asks for exactly that), else 0.
    Deviation: the text does not show whether the answer ended with EOS or was cut at
    max_new_tokens; a cut answer is long, so max_chars stands in for "ends properly".

    >>> format_reward({"answer": 81}, " 81"), format_reward({"answer": 81}, "It is 81")
    (0.2, 0.0)
    """
    text = completion.strip()
    return 0.2 if len(text) <= max_chars and re.fullmatch(r"-?\d+", text) else 0.0
