"""Reasoning traces and verifier data from the generated task families (`FAMILIES`): the
word problems of ember.data.reasoning_tasks ("arithmetic", the default) and the letter
puzzles of ember.data.puzzle_tasks ("puzzle"). Every function takes `family`.

- `trace_conversations`: chats whose assistant turn is the reference solution, `<think>` one
  equation per line `</think>` then "The answer is N." (`ember sft --dataset reasoning`).
- `verifier_rows`: solutions to score, half right and half corrupted (one wrong step at a
  random position, everything after it wrong), with the final outcome and per-step labels.
- `encode_solution`: a question and its steps as token ids plus the position of every
  step's last token (where a process reward model scores) and of the last token (where an
  outcome reward model scores). Training and scoring both encode through it.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ember.core.io import atomic_write_text
from ember.data import puzzle_tasks, reasoning_tasks
from ember.data.reasoning_tasks import LEVELS

FAMILIES = {"arithmetic": reasoning_tasks, "puzzle": puzzle_tasks}
"""Task family name → its module (make_problems, prompt_text, solution_text, extract_answer,
is_correct, step_labels, corrupt, LEVELS)."""
DIFFICULTIES = tuple(LEVELS)
"""The difficulties the built-in training data mixes: every level, 1..5."""


def family_module(family: str):
    """The module of a task family (a key of FAMILIES).

    >>> family_module("puzzle").__name__
    'ember.data.puzzle_tasks'
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return FAMILIES[family]


def mixed_problems(n: int, seed: int, difficulties=DIFFICULTIES, split: str = "train",
                   family: str = "arithmetic") -> list[dict]:
    """`n` problems cycling over `difficulties`; train and heldout splits use distinct seeds.

    >>> [p["difficulty"] for p in mixed_problems(6, 0)]
    [1, 2, 3, 4, 5, 1]
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, got {split!r}")
    mod = family_module(family)
    base = seed * 2 + (split == "heldout") + 10_000
    per = -(-n // len(difficulties))
    pools = {d: mod.make_problems(per, d, base) for d in difficulties}
    return [pools[difficulties[i % len(difficulties)]][i // len(difficulties)] for i in range(n)]


def trace_conversations(n: int, seed: int, difficulties=DIFFICULTIES, family: str = "arithmetic") -> list[list[dict]]:
    """`n` chats: the question, then the reference solution as the assistant turn."""
    mod = family_module(family)
    return [[{"role": "user", "content": mod.prompt_text(p)},
             {"role": "assistant", "content": mod.solution_text(p["steps"], p["answer"])}]
            for p in mixed_problems(n, seed, difficulties, family=family)]


def write_trace_jsonl(path: str | Path, n: int, seed: int, family: str = "arithmetic") -> Path:
    """`trace_conversations` as chat JSONL ({"messages": [...]} per line)."""
    text = "".join(json.dumps({"messages": c}) + "\n" for c in trace_conversations(n, seed, family=family))
    atomic_write_text(path, text)
    return Path(path)


def verifier_rows(n: int, seed: int, split: str = "train", family: str = "arithmetic") -> list[dict]:
    """`n` scored solutions {"question", "steps", "labels", "correct"}: the reference
    solution (all labels 1) or a corrupted one, alternating per round of difficulties so
    that each difficulty has as many of both.

    >>> [(r["difficulty"], r["correct"], r["labels"]) for r in verifier_rows(10, 0)][::3]
    [(1, 1, [1]), (4, 1, [1]), (2, 0, [0]), (5, 0, [1, 0])]
    """
    mod = family_module(family)
    rng = random.Random(f"verifier-{split}-{seed}" + ("" if family == "arithmetic" else f"-{family}"))
    rows = []
    for i, p in enumerate(mixed_problems(n, seed, split=split, family=family)):
        if (i // len(DIFFICULTIES)) % 2 == 0:
            steps, labels = list(p["steps"]), [1] * len(p["steps"])
        else:
            steps, labels = mod.corrupt(p, rng)
        rows.append({"question": p["question"], "steps": steps, "labels": labels, "correct": int(all(labels)),
                     "difficulty": p["difficulty"]})
    return rows


def problem_rows(n: int, difficulty: int, seed: int, split: int | str, family: str = "arithmetic") -> list[dict]:
    """GRPO prompt rows {"question", "expression", "answer", "difficulty"}: the "heldout" set, or a
    training step's (split = the step), each from its own seeded stream.

    >>> problem_rows(1, 3, 0, "heldout")[0]["answer"] != problem_rows(1, 3, 0, 0)[0]["answer"]
    True
    """
    mod = family_module(family)
    stream = 7_919 * seed + (999_983 if split == "heldout" else 1 + int(split))
    return [{"question": mod.prompt_text(p), "expression": p["question"], "answer": p["answer"],
             "difficulty": difficulty} for p in mod.make_problems(n, difficulty, 100_000 + stream)]


def think_format_reward(row: dict, completion: str) -> float:
    """0.2 for a closed thought followed by "The answer is N", else 0.

    >>> think_format_reward({}, "<think>\\n1 + 1 = 2\\n</think>\\nThe answer is 2."), think_format_reward({}, "2")
    (0.2, 0.0)
    """
    head, sep, tail = completion.partition("</think>")
    return 0.2 if sep and "<think>" in head and re.search(r"answer is -?\d+", tail) else 0.0


def encode_solution(tok, question: str, steps: list[str], max_len: int,
                    family: str = "arithmetic") -> tuple[list[int], list[int], int]:
    """(ids, step_end positions, last position) of the chat [user: question, assistant:
    solution]. Each step is encoded on its own (with its newline), so a step's last token is
    known exactly; a solution longer than max_len keeps its end (the prompt is cut from the
    left) and drops step positions that fell off."""
    mod = family_module(family)
    ids = tok.render_chat([{"role": "user", "content": mod.prompt_text({"question": question})}],
                          add_generation_prompt=True)[0]
    ids = ids + tok.encode("<think>\n")
    ends = []
    for step in steps:
        ids = ids + tok.encode(step + "\n")
        ends.append(len(ids) - 1)
    answer = steps[-1].rsplit("=" if family == "arithmetic" else "->", 1)[-1].strip() if steps else ""
    ids = ids + tok.encode(f"</think>\nThe answer is {answer}.")
    cut = max(0, len(ids) - max_len)
    return ids[cut:], [e - cut for e in ends if e >= cut], len(ids) - 1 - cut


def encode_verifier_rows(tok, rows: list[dict], max_len: int, objective: str) -> list[dict]:
    """Each row as {"ids", "positions", "targets"}: outcome scores the last token against
    "correct"; steps scores every step's last token against its label."""
    if objective not in ("outcome", "steps"):
        raise ValueError(f"objective must be outcome or steps, got {objective!r}")
    out = []
    for r in rows:
        ids, ends, last = encode_solution(tok, r["question"], r["steps"], max_len)
        if objective == "outcome":
            out.append({"ids": ids, "positions": [last], "targets": [float(r["correct"])]})
        else:
            labels = r["labels"][len(r["labels"]) - len(ends):]
            out.append({"ids": ids, "positions": ends, "targets": [float(x) for x in labels]})
    return out
