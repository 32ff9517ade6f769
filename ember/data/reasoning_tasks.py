"""Generated reasoning problems with exact answers, checkable steps and a difficulty knob.

A problem is an arithmetic word problem: a person starts with some items and events change
the count (buys, gives away, doubles, ...). Its reference solution is one equation per
event, `a op b = c`, each using the previous result, so a step is checked mechanically: the
equation must hold and `c` must be the reference value.

Difficulty 1..5 (`LEVELS`): levels 1-3 are one event whose sentence also states the
expression ("Dan sells 3 marbles, so Dan has 10 - 3 marbles."), level 4 one event without
it, level 5 two events. Greedy accuracy of SmolLM2-135M-Instruct on the native Q4 path
(`ember.load("smollm2", quant="auto")`, engine batch 32, batch_invariant=False) with the chat
prompt `prompt_text`, replies cut at 80 tokens, `extract_answer` (2026-12-06, one thread of
the 2-core CPU under load 10-18):

    bench/reasoning_strategies.py levels --quant auto --batch 32 --n 100   (seed 12345)

    level  steps  operations    stated  start  added/removed   accuracy  95% CI (Wilson)  n
    1      1      +             yes     2-9    1-5             0.320     [0.237, 0.417]   100
    2      1      +             yes     3-12   1-9             0.270     [0.193, 0.364]   100
    3      1      +, -          yes     3-12   1-9             0.280     [0.201, 0.375]   100
    4      1      +, -, x2, x3  no      3-20   2-12 / 1-12     0.190     [0.125, 0.278]   100
    5      2      +, -, x2, x3  no      3-20   2-12 / 1-12     0.030     [0.010, 0.085]   100

The middle level lands in the 20-40% band, its interval just inside it; levels 1-3 differ by
less than their intervals (2 and 3 are not ordered by this measurement). Without the stated
expression the numbers barely matter: one `+` event measured 0.212 [0.137, 0.314] with start
1-5 and 1-3 added, 0.188 [0.117, 0.287] with start 2-9 and 1-5 added (n = 80 each, other
problems of the same shape), and most wrong replies write no equation at all ("1. First,
find out how many ...") or a wrong one ("3 coins = 3 * 2 = 6" for "buys 2 more"). Stating
the expression is what moves it: + and - with it, 0.287 [0.200, 0.395] on another 80.

    >>> p = make_problems(1, difficulty=5, seed=0)[0]
    >>> p["steps"], p["answer"]
    (['14 * 3 = 42', '42 + 10 = 52'], 52)
    >>> step_labels(p, ["14 * 3 = 42", "42 + 10 = 51"])
    [1, 0]

Solutions are written `<think>` one step per line `</think>` then "The answer is N.";
`extract_answer` reads N back (the last "answer is N", else the last number after
`</think>`, else the last number).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ember.core.io import atomic_write_text

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Iris", "Jack")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pencils")
MAX_DIFFICULTY = 5


@dataclass(frozen=True)
class Level:
    """One difficulty: what its problems look like."""

    steps: int
    """events (= equations in the solution)"""
    ops: tuple[str, ...]
    """the operators its events draw from (* doubles or triples)"""
    start: tuple[int, int]
    """the range of the starting count"""
    operand: tuple[int, int]
    """the range of an added or removed count (a removal leaves at least 1)"""
    shown: bool = False
    """each event's sentence also states the expression ("..., so Ava has 3 + 2 apples.")"""


LEVELS = {
    1: Level(1, ("+",), (2, 9), (1, 5), shown=True),
    2: Level(1, ("+",), (3, 12), (1, 9), shown=True),
    3: Level(1, ("+", "-"), (3, 12), (1, 9), shown=True),
    4: Level(1, ("+", "-", "*"), (3, 20), (2, 12)),
    5: Level(2, ("+", "-", "*"), (3, 20), (2, 12)),
}
"""Difficulty → what its problems look like (see the module's table)."""
_EQUATION = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*\.?\s*$")
_NUMBER = re.compile(r"-?\d+")
_ANSWER_IS = re.compile(r"answer is:?\s*\**\s*(-?\d+)", re.IGNORECASE)
PROMPT_SUFFIX = " Think step by step, one equation per line, then give the answer."


def _event(rng: random.Random, x: int, name: str, item: str, level: Level) -> tuple[str, str, int]:
    """One event on the count x: (sentence, operator, operand)."""
    choices = [op for op in level.ops if op == "+" or (op == "-" and x > 1) or (op == "*" and x <= 30)]
    op = rng.choice(choices)
    if op == "+":
        k = rng.randint(*level.operand)
        text = rng.choice([f"{name} buys {k} more {item}.", f"A friend gives {name} {k} {item}.",
                           f"{name} finds {k} {item}."])
    elif op == "-":
        k = rng.randint(1, min(x - 1, level.operand[1]))
        text = rng.choice([f"{name} gives away {k} {item}.", f"{name} loses {k} {item}.",
                           f"{name} sells {k} {item}."])
    else:
        k = rng.choice([2, 3])
        text = f"{name}'s {item} {'double' if k == 2 else 'triple'}."
    return text, op, k


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def make_problem(rng: random.Random, difficulty: int) -> dict:
    """One problem at `difficulty` (1..MAX_DIFFICULTY, see LEVELS)."""
    level = LEVELS[difficulty]
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    x = rng.randint(*level.start)
    sentences, steps = [f"{name} has {x} {item}."], []
    for _ in range(level.steps):
        text, op, k = _event(rng, x, name, item, level)
        y = _apply(x, op, k)
        sentences.append(text[:-1] + f", so {name} has {x} {op} {k} {item}." if level.shown else text)
        steps.append(f"{x} {op} {k} = {y}")
        x = y
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return {"question": question, "answer": x, "steps": steps, "difficulty": difficulty}


def make_problems(n: int, difficulty: int, seed: int) -> list[dict]:
    """`n` problems at `difficulty`, a pure function of (n, difficulty, seed).

    >>> [p["answer"] for p in make_problems(3, 1, seed=1)]
    [10, 5, 12]
    """
    return problem_list(make_problem, "reasoning", n, difficulty, seed)


def problem_list(make_one, family: str, n: int, difficulty: int, seed: int, top: int = MAX_DIFFICULTY) -> list[dict]:
    """`n` problems from `make_one(rng, difficulty)` with a random stream of (family,
    difficulty, seed) alone, after checking n and difficulty (1..top)."""
    if not 1 <= difficulty <= top:
        raise ValueError(f"difficulty must be in 1..{top}, got {difficulty}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{family}-{difficulty}-{seed}")
    return [make_one(rng, difficulty) for _ in range(n)]


def parse_step(step: str) -> tuple[int, str, int, int] | None:
    """(a, op, b, c) of an equation line `a op b = c`, or None.

    >>> parse_step("3 * 4 = 12"), parse_step("so 12")
    ((3, '*', 4, 12), None)
    """
    m = _EQUATION.match(step)
    return (int(m[1]), m[2], int(m[3]), int(m[4])) if m else None


def check_step(step: str) -> bool:
    """The line is an equation that holds.

    >>> check_step("7 - 2 = 5"), check_step("7 - 2 = 4"), check_step("five")
    (True, False, False)
    """
    parsed = parse_step(step)
    return parsed is not None and _apply(*parsed[:3]) == parsed[3]


def step_labels(problem: dict, steps: list[str]) -> list[int]:
    """1 for each step up to the first wrong one, 0 from it on. A step is right when its
    equation holds and its result is the reference's at that position."""
    labels, ok = [], True
    ref = problem["steps"]
    for i, step in enumerate(steps):
        parsed = parse_step(step)
        ok = ok and check_step(step) and i < len(ref) and parsed[3] == parse_step(ref[i])[3]
        labels.append(int(ok))
    return labels


def corrupt(problem: dict, rng: random.Random) -> tuple[list[str], list[int]]:
    """A wrong solution: a random step gets a wrong result (an off-by-some slip), and every
    later step carries the wrong value on (each computed correctly from it). Returns (steps,
    labels), labels 1 before the slip and 0 from it.

    >>> p = make_problems(1, 5, seed=0)[0]
    >>> p["steps"]
    ['14 * 3 = 42', '42 + 10 = 52']
    >>> corrupt(p, random.Random(1))
    (['14 * 3 = 44', '44 + 10 = 54'], [0, 0])
    """
    steps = [parse_step(s) for s in problem["steps"]]
    k = rng.randrange(len(steps))
    out, x = [], None
    for i, (a, op, b, c) in enumerate(steps):
        if x is not None:
            a, c = x, _apply(x, op, b)
        if i == k:
            c = c + rng.choice([-3, -2, -1, 1, 2, 3, 10])
        out.append(f"{a} {op} {b} = {c}")
        x = c
    return out, [int(i < k) for i in range(len(steps))]


def solution_text(steps: list[str], answer: int | str | None = None) -> str:
    """The written solution: the steps inside <think>, then the answer (default: the last
    step's result).

    >>> solution_text(["2 + 3 = 5"])
    '<think>\\n2 + 3 = 5\\n</think>\\nThe answer is 5.'
    """
    if answer is None:
        answer = parse_step(steps[-1])[3] if steps and parse_step(steps[-1]) else ""
    return "<think>\n" + "".join(s + "\n" for s in steps) + f"</think>\nThe answer is {answer}."


def extract_answer(text: str) -> int | None:
    """The final answer of a reply: the last "answer is N" (a reply may go on after stating
    it), else the last number after `</think>`, else the last number of the whole text.

    >>> extract_answer("<think>\\n2 + 3 = 5\\n</think>\\nThe answer is 5."), extract_answer("no")
    (5, None)
    >>> extract_answer("3 * 2 = 6. The answer is 6. Step 2: 6 + 1 = 7")
    6
    """
    stated = _ANSWER_IS.findall(text)
    if stated:
        return int(stated[-1])
    tail = text.rsplit("</think>", 1)[-1]
    numbers = _NUMBER.findall(tail) or _NUMBER.findall(text)
    return int(numbers[-1]) if numbers else None


def is_correct(problem: dict, text: str) -> bool:
    """The reply's final answer is the problem's."""
    return extract_answer(text) == int(problem["answer"])


def prompt_text(problem: dict) -> str:
    """The user turn that asks for a step-by-step solution."""
    return problem["question"] + PROMPT_SUFFIX


def write_jsonl(path: str | Path, problems: list[dict]) -> Path:
    """One problem per line (the eval harness's `json` dataset)."""
    text = "".join(json.dumps({**p, "answer": str(p["answer"])}) + "\n" for p in problems)
    atomic_write_text(path, text)
    return Path(path)


def write_task(folder: str | Path, difficulty: int, n: int = 100, seed: int = 0, n_dev: int = 8) -> Path:
    """An eval-harness task (YAML + test/dev JSONL) of `n` problems at `difficulty`, for
    `ember eval run --task FOLDER/reasoning_dD.yaml`. Returns the YAML's path."""
    folder = Path(folder)
    name = f"reasoning_d{difficulty}"
    problems = make_problems(n + n_dev, difficulty, seed)
    write_jsonl(folder / f"{name}.jsonl", problems[:n])
    write_jsonl(folder / f"{name}_dev.jsonl", problems[n:])
    yaml_text = (
        f"# Generated multi-step word problems (ember.data.reasoning_tasks, difficulty {difficulty}, seed {seed}).\n"
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {name}.jsonl\n    dev: {name}_dev.jsonl\ntest_split: test\nfewshot_split: dev\n"
        f"output_type: generate_until\n"
        f"doc_to_text: \"Question: {{{{question}}}}{PROMPT_SUFFIX}\\nAnswer:\"\n"
        "doc_to_target: answer\ngeneration_kwargs:\n  until: [\"Question:\"]\n  max_gen_toks: 160\n"
        "  do_sample: false\nfilter_list:\n  - name: last-number\n    filter:\n      - function: regex\n"
        "        regex_pattern: \"(-?[0-9]+)\"\n        group_select: -1\n      - function: take_first\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    path = folder / f"{name}.yaml"
    atomic_write_text(path, yaml_text)
    return path
