"""Prompt builders: zero-shot and k-shot prompts, system prompts, chat or plain completion.

A `Problem` is a question, its gold answer and, for multiple choice, its choices (shown as
lettered options; the gold answer is then the letter). A `Template` says how a problem
reads; `build_prompt` joins an optional system prompt, k demonstrations (drawn with a seeded
`random.Random`, in a seeded order) and the question, ending with the answer cue, or with
a chain-of-thought trigger ("Let's think step by step.") when `cot` is on.

- plain: one completion string, "system\\n\\n" + demonstrations + question + cue.
- chat: messages for the model's chat template: the system message, then each
  demonstration as a user turn and an assistant turn, then the question as the last user turn.

    >>> p = Problem("What is 2 + 3?", "5")
    >>> print(build_prompt(p, [Problem("What is 1 + 1?", "2")]))
    Question: What is 1 + 1?
    Answer: 2
    <BLANKLINE>
    Question: What is 2 + 3?
    Answer:
    >>> build_prompt(p, [], chat=True, cot=True)[-1]["content"]
    "Question: What is 2 + 3?\\nAnswer: Let's think step by step."
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LETTERS = "ABCDEFGH"
COT_TRIGGER = "Let's think step by step."


@dataclass(frozen=True)
class Problem:
    """One question; `answer` is the gold string (a letter when there are choices)."""

    question: str
    answer: str
    choices: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.choices is not None and not 2 <= len(self.choices) <= len(LETTERS):
            raise ValueError(f"a problem has 2..{len(LETTERS)} choices, got {len(self.choices)}")


@dataclass(frozen=True)
class Template:
    """How a problem reads: `question` formats {question} (and {options}, the lettered
    choices); `cue` starts the answer; `delimiter` separates demonstrations."""

    question: str = "Question: {question}"
    cue: str = "Answer:"
    delimiter: str = "\n\n"
    options: str = "\n{letter}. {choice}"

    def render(self, p: Problem) -> str:
        options = "".join(self.options.format(letter=LETTERS[i], choice=c) for i, c in enumerate(p.choices or ()))
        text = self.question.format(question=p.question, options=options)
        if options and "{options}" not in self.question:
            text += options
        return text


TEMPLATES = {
    "qa": Template(),
    "qa-terse": Template(question="Q: {question}", cue="A:"),
    "instruct": Template(question="Solve the problem and give the final answer.\n{question}",
                         cue="Final answer:"),
}


def sample_demos(pool: list[Problem], k: int, seed: int, exclude: Problem | None = None) -> list[Problem]:
    """k demonstrations drawn from `pool` without replacement by `random.Random(seed)`,
    never `exclude` (the evaluated problem); their order is the draw's.

    >>> pool = [Problem(str(i), str(i)) for i in range(5)]
    >>> [d.question for d in sample_demos(pool, 3, seed=0)]
    ['3', '4', '0']
    """
    if k < 0:
        raise ValueError(f"shots must be >= 0, got {k}")
    cand = [p for p in pool if p != exclude]
    if k > len(cand):
        raise ValueError(f"{k} shots need {k} demonstrations; the pool has {len(cand)}")
    return random.Random(seed).sample(cand, k)


def reorder(demos: list[Problem], seed: int) -> list[Problem]:
    """The same demonstrations in another seeded order (prompt-sensitivity runs)."""
    out = list(demos)
    random.Random(seed).shuffle(out)
    return out


def build_prompt(problem: Problem, demos: list[Problem], template: Template | None = None, system: str = "",
                 cot: bool = False, chat: bool = False, cot_trigger: str = COT_TRIGGER):
    """A plain completion prompt (str), or chat messages (list of dicts) with `chat`."""
    t = template or TEMPLATES["qa"]
    last = t.render(problem) + "\n" + t.cue + (" " + cot_trigger if cot else "")
    if chat:
        msgs = [{"role": "system", "content": system}] if system else []
        for d in demos:
            msgs += [{"role": "user", "content": t.render(d) + "\n" + t.cue},
                     {"role": "assistant", "content": d.answer}]
        return [*msgs, {"role": "user", "content": last}]
    head = system + t.delimiter if system else ""
    shots = "".join(t.render(d) + "\n" + t.cue + " " + d.answer + t.delimiter for d in demos)
    return head + shots + last


def revision_prompt(prompt, previous: str, chat: bool = False):
    """The follow-up that asks the model to check and revise its previous answer."""
    ask = "Check the answer above step by step. If it is wrong, correct it. End with: The answer is X."
    if chat:
        return [*prompt, {"role": "assistant", "content": previous}, {"role": "user", "content": ask}]
    return prompt + " " + previous.strip() + "\n\n" + ask + "\n"
