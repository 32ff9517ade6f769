"""Generated symbolic puzzles with exact answers, checkable steps and a difficulty knob.

A puzzle is a list of animal names and operations on it, in order (add an item at the end,
remove an item, reverse the list, swap the first and the last item, move the first item to
the end, replace an item with another); the answer is the list after the last operation.
Its reference solution is one line per operation, `op: BEFORE -> AFTER`, each starting from
the previous list, so a step is checked mechanically: AFTER must be the operation applied
to BEFORE and equal the reference list at that position.

Difficulty 1..5 (`LEVELS`): levels 1-3 add one item at the end of a list of 2, 2-3 and 2-4
items, level 4 applies one operation of any kind to 3-4 items, level 5 two to 4-5. Greedy
accuracy of SmolLM2-135M-Instruct on the native Q4 path (`ember.load("smollm2",
quant="auto")`, engine batch 32, batch_invariant=False) with the chat prompt `prompt_text`,
replies cut at 80 tokens, `extract_answer` (2026-12-06, one thread of the 2-core CPU under
load 10-18):

    bench/reasoning_strategies.py levels --family puzzle --quant auto --batch 32 --n 100   (seed 12345)

    level  steps  operations   items  accuracy  95% CI (Wilson)  n
    1      1      append       2      0.430     [0.337, 0.528]   100
    2      1      append       2-3    0.330     [0.246, 0.427]   100
    3      1      append       2-4    0.340     [0.255, 0.437]   100
    4      1      any of OPS   3-4    0.020     [0.006, 0.070]   100
    5      2      any of OPS   4-5    0.010     [0.002, 0.054]   100

The middle level lands in the 20-40% band at its point estimate, its interval reaching
0.44; levels 2 and 3 are not ordered by this measurement (the lists' lengths overlap).
Appending is the only operation the model does: one operation of any other kind on three
items (reverse, swap, rotate, replace) measured 0.013 [0.002, 0.067] (n = 80), and 50 of the
100 level-4 replies give the starting list back unchanged (11 give none). Longer lists cost
accuracy fast (other problems of each shape): appending to 2 items 0.438 [0.334, 0.547]
(n = 80) and 0.490 [0.394, 0.587] (n = 100), to 3 items 0.150 [0.093, 0.233] (n = 100), to 4
items 0.138 [0.079, 0.230] (n = 80); to a 1- or 2-item list 0.260 [0.184, 0.354] (n = 100:
one-item lists confuse it).
The extraction reads numbered and bulleted columns ("1. Cat\\n2. Owl"), the model's usual
format; without it, appending or removing on 3 items measured 0.025 instead of 0.163 (the
same 80 replies).

    >>> p = make_problems(1, difficulty=5, seed=0)[0]
    >>> p["question"]
    'Start with the list: dog, bird, frog, duck, bee. Move the first item to the end. Then add fox at the end. What is the list now?'
    >>> p["steps"]
    ['rotate: dog, bird, frog, duck, bee -> bird, frog, duck, bee, dog', 'append fox: bird, frog, duck, bee, dog -> bird, frog, duck, bee, dog, fox']
    >>> step_labels(p, ["rotate: dog, bird, frog, duck, bee -> bird, frog, duck, bee, dog", "append fox: bird -> bird, fox"])
    [1, 0]

Solutions are written `<think>` one step per line `</think>` then "The answer is a, b, c.";
`extract_answer` reads the list back (the known items stated after the last "answer is",
else the last list of known items after `</think>`, else the last of the whole text).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ember.data.reasoning_tasks import problem_list

WORDS = ("cat", "dog", "fish", "bird", "frog", "duck", "goat", "bear", "lion", "wolf", "fox", "owl", "cow", "pig",
         "hen", "bee")
"""The items a list draws from (one short word each)."""
MAX_DIFFICULTY = 5
PROMPT_SUFFIX = " Think step by step, one operation per line, then give the answer."


@dataclass(frozen=True)
class Level:
    """One difficulty: what its puzzles look like."""

    steps: int
    """operations (= lines in the solution)"""
    ops: tuple[str, ...]
    """the operations its steps draw from (see OPS)"""
    length: tuple[int, int]
    """the range of the starting list's length"""


OPS = ("append", "remove", "reverse", "swap", "rotate", "replace")
"""The operations: add an item at the end, remove an item, reverse the list, swap the first
and the last item, move the first item to the end, replace an item with another."""
LEVELS = {
    1: Level(1, ("append",), (2, 2)),
    2: Level(1, ("append",), (2, 3)),
    3: Level(1, ("append",), (2, 4)),
    4: Level(1, OPS, (3, 4)),
    5: Level(2, OPS, (4, 5)),
}
"""Difficulty → what its puzzles look like (see the module's table)."""
_ROW = r"[a-z]+(?:, [a-z]+)*"
_STEP = re.compile(rf"^\s*(append [a-z]+|remove [a-z]+|reverse|swap|rotate|replace [a-z]+ with [a-z]+)\s*:\s*"
                   rf"({_ROW})\s*->\s*({_ROW})\s*\.?\s*$")
_ANSWER_IS = re.compile(r"answer is:?\s*([^\n]*)", re.IGNORECASE)
_WORD = r"\b(?:" + "|".join(WORDS) + r")\b"
_LIST = re.compile(rf"{_WORD}(?:(?:[\s,\[\]'\"*-]|\d+[.)])*(?:and\s+)?{_WORD})*", re.IGNORECASE)


def apply_op(op: str, row: list[str]) -> list[str] | None:
    """`row` after the operation `op` ("append X", "remove X", "reverse", "swap", "rotate",
    "replace X with Y"), or None when it does not apply (removing or replacing an absent item).

    >>> apply_op("swap", ["cat", "dog", "owl"]), apply_op("remove pig", ["cat"])
    (['owl', 'dog', 'cat'], None)
    >>> apply_op("replace dog with fox", ["cat", "dog", "owl"])
    ['cat', 'fox', 'owl']
    """
    word, *args = op.split()
    if word == "append":
        return row + [args[0]]
    if word == "reverse":
        return row[::-1]
    if word == "swap":
        return row[-1:] + row[1:-1] + row[:1] if len(row) > 1 else list(row)
    if word == "rotate":
        return row[1:] + row[:1]
    if args[0] not in row:
        return None
    if word == "remove":
        i = row.index(args[0])
        return row[:i] + row[i + 1:]
    return [args[2] if x == args[0] else x for x in row]


def _sentence(op: str) -> str:
    word, *args = op.split()
    return {"append": lambda: f"Add {args[0]} at the end.", "remove": lambda: f"Remove {args[0]}.",
            "reverse": lambda: "Reverse the list.", "swap": lambda: "Swap the first and the last item.",
            "rotate": lambda: "Move the first item to the end.",
            "replace": lambda: f"Replace {args[0]} with {args[2]}."}[word]()


def _pick_op(rng: random.Random, row: list[str], level: Level, last: str, seen: set[str]) -> str:
    """An operation for `row`: not `last`'s kind again (reverse twice undoes itself), and an
    added item is one the puzzle has not shown yet."""
    word = rng.choice([w for w in level.ops if (w not in ("remove", "swap", "rotate") or len(row) > 2)
                       and (w != last or len(level.ops) == 1)])
    unused = [x for x in WORDS if x not in seen]
    if word == "append":
        return f"append {rng.choice(unused)}"
    if word == "remove":
        return f"remove {rng.choice(row)}"
    if word == "replace":
        return f"replace {rng.choice(row)} with {rng.choice(unused)}"
    return word


def make_problem(rng: random.Random, difficulty: int) -> dict:
    """One puzzle at `difficulty` (1..MAX_DIFFICULTY, see LEVELS)."""
    level = LEVELS[difficulty]
    row = rng.sample(WORDS, rng.randint(*level.length))
    sentences, steps, seen = [f"Start with the list: {', '.join(row)}."], [], set(row)
    for i in range(level.steps):
        op = _pick_op(rng, row, level, steps[-1].split()[0].rstrip(":") if steps else "", seen)
        new = apply_op(op, row)
        seen.update(new)
        text = _sentence(op)
        sentences.append(f"Then {text[0].lower()}{text[1:]}" if i else text)
        steps.append(f"{op}: {', '.join(row)} -> {', '.join(new)}")
        row = new
    question = " ".join(sentences) + " What is the list now?"
    return {"question": question, "answer": ", ".join(row), "steps": steps, "difficulty": difficulty}


def make_problems(n: int, difficulty: int, seed: int) -> list[dict]:
    """`n` puzzles at `difficulty`, a pure function of (n, difficulty, seed).

    >>> [p["answer"] for p in make_problems(2, 1, seed=1)]
    ['bee, pig, bear', 'bird, frog, bee']
    """
    return problem_list(make_problem, "puzzle", n, difficulty, seed, MAX_DIFFICULTY)


def parse_step(step: str) -> tuple[str, list[str], list[str]] | None:
    """(op, before, after) of a line `op: a, b -> c, d`, or None.

    >>> parse_step("reverse: cat, dog -> dog, cat"), parse_step("so dog, cat")
    (('reverse', ['cat', 'dog'], ['dog', 'cat']), None)
    """
    m = _STEP.match(step)
    return (m[1], m[2].split(", "), m[3].split(", ")) if m else None


def check_step(step: str) -> bool:
    """The line is an operation whose result is right.

    >>> check_step("rotate: cat, dog, owl -> dog, owl, cat"), check_step("rotate: cat, dog -> cat, dog"), check_step("5")
    (True, False, False)
    """
    parsed = parse_step(step)
    return parsed is not None and apply_op(parsed[0], parsed[1]) == parsed[2]


def step_labels(problem: dict, steps: list[str]) -> list[int]:
    """1 for each step up to the first wrong one, 0 from it on. A step is right when its
    operation's result is right and is the reference's row at that position."""
    labels, ok = [], True
    ref = problem["steps"]
    for i, step in enumerate(steps):
        ok = ok and check_step(step) and i < len(ref) and parse_step(step)[2] == parse_step(ref[i])[2]
        labels.append(int(ok))
    return labels


def corrupt(problem: dict, rng: random.Random) -> tuple[list[str], list[int]]:
    """A wrong solution: a random step's result gets one item wrong, and every later step
    carries the wrong list on (each applied correctly to it). Returns (steps, labels), labels 1
    before the slip and 0 from it."""
    steps = [parse_step(s) for s in problem["steps"]]
    k = rng.randrange(len(steps))
    out, row = [], None
    for i, (op, before, after) in enumerate(steps):
        if row is not None:
            before, after = row, apply_op(op, row) or list(row)
        if i == k:
            j = rng.randrange(len(after)) if after else 0
            slip = rng.choice([x for x in WORDS if x not in after])
            after = after[:j] + [slip] + after[j + 1:]
        out.append(f"{op}: {', '.join(before)} -> {', '.join(after)}")
        row = after
    return out, [int(i < k) for i in range(len(steps))]


def solution_text(steps: list[str], answer: str | None = None) -> str:
    """The written solution: the steps inside <think>, then the answer (default: the last
    step's list).

    >>> solution_text(["reverse: cat, dog -> dog, cat"])
    '<think>\\nreverse: cat, dog -> dog, cat\\n</think>\\nThe answer is dog, cat.'
    """
    if answer is None:
        answer = ", ".join(parse_step(steps[-1])[2]) if steps and parse_step(steps[-1]) else ""
    return "<think>\n" + "".join(s + "\n" for s in steps) + f"</think>\nThe answer is {answer}."


def _last_list(text: str) -> str | None:
    found = _LIST.findall(text)
    return ", ".join(re.findall(_WORD, found[-1].lower())) if found else None


def extract_answer(text: str) -> str | None:
    """The final list of a reply, items joined by ", ": the list stated after the last
    "answer is", else the last list of known items after `</think>`, else the last of the
    whole text (separators, brackets, item numbers and case ignored).

    >>> extract_answer("<think>\\nreverse: cat, dog -> dog, cat\\n</think>\\nThe answer is dog, cat."), extract_answer("no")
    ('dog, cat', None)
    >>> extract_answer("The answer is: [Cat, Owl and Fox]. Then pig.")
    'cat, owl, fox'
    >>> extract_answer("The list now is:\\n1. Cat\\n2. Owl")
    'cat, owl'
    """
    for stated in reversed(_ANSWER_IS.findall(text)):
        found = _last_list(re.split(r"\.(?:\s|$)", stated, maxsplit=1)[0])
        if found:
            return found
    return _last_list(text.rsplit("</think>", 1)[-1]) or _last_list(text)


def is_correct(problem: dict, text: str) -> bool:
    """The reply's final list is the problem's."""
    return extract_answer(text) == problem["answer"]


def prompt_text(problem: dict) -> str:
    """The user turn that asks for a step-by-step solution."""
    return problem["question"] + PROMPT_SUFFIX
