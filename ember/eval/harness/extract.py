"""Answer extraction: lm-eval's filters over a generated response, and a few presets.

A task's `filter_list` is a list of named pipelines; each step is `{function: NAME, ...}`.
lm-eval's functions: `regex` (regex_pattern, group_select, fallback), `take_first`,
`lowercase`, `uppercase`, `remove_whitespace`. ember adds presets built on `regex`
(lm-eval rejects these names; write them as `regex` steps there): `first_number`,
`last_number` and `choice_letter` (the first letter A-H standing alone; not I, a word);
`choice_answer` (an explicit "Answer: X" / "the answer is X", else the last letter standing
alone that does not open a restated option line, e.g. "B. London").
Each item has one response here, so `take_first` keeps it as is.

    >>> build_pipeline([{"function": "regex", "regex_pattern": "(-?[0-9]+)", "group_select": -1}])("3 + 4 = 7")
    '7'
    >>> build_pipeline([{"function": "choice_letter"}])("The answer is (B).")
    'B'
"""

from __future__ import annotations

import re
from collections.abc import Callable

FALLBACK = "[invalid]"  # lm-eval's RegexFilter default
NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?)"
PRESETS = {"first_number": (NUMBER, 0), "last_number": (NUMBER, -1), "choice_letter": (r"\b([A-H])\b", 0)}


def regex_extract(text: str, pattern: str, group_select: int = 0, fallback: str = FALLBACK) -> str:
    """lm-eval's RegexFilter: the `group_select`-th match of `pattern` (with groups: the
    first non-empty group of that match), stripped; `fallback` when nothing matches.

    >>> regex_extract("#### 42", r"#### (\\-?[0-9\\.\\,]+)")
    '42'
    >>> regex_extract("no digits", NUMBER)
    '[invalid]'
    """
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    try:
        match = matches[group_select]
    except IndexError:
        return fallback
    if isinstance(match, tuple):
        match = next((m for m in match if m), fallback)
    return match.strip()


EXPLICIT_LETTER = r"(?i:answer(?:[ \t]+is)?)[ \t]*:?[ \t]*\(?([A-H])\b"
OPTION_LINE = r"(?m)^\s*\(?([A-H])[.)]\s"


def choice_answer(text: str, fallback: str = FALLBACK) -> str:
    """The chosen letter of a reply that may restate the options: the last explicit
    "answer is X" / "Answer: X", else the last letter A-H standing alone outside an option
    line ("A. Paris" at a line's start), else the last standing alone, else `fallback`.

    >>> choice_answer("A. Paris\\nB. London\\nThe answer is B.")
    'B'
    >>> choice_answer("Options: A. ice, B. fire. I pick B"), choice_answer("no letter")
    ('B', '[invalid]')
    """
    explicit = re.findall(EXPLICIT_LETTER, text)
    if explicit:
        return explicit[-1]
    listed = {m.start(1) for m in re.finditer(OPTION_LINE, text)}
    alone = [m for m in re.finditer(r"\b([A-H])\b", text)]
    free = [m[1] for m in alone if m.start(1) not in listed]
    return (free or [m[1] for m in alone] or [fallback])[-1]


def _step(spec: dict, where: str) -> Callable[[str], str]:
    if not isinstance(spec, dict) or "function" not in spec:
        raise ValueError(f"{where}: each filter step is a mapping with a 'function', got {spec!r}")
    name, args = spec["function"], {k: v for k, v in spec.items() if k != "function"}
    allowed = {"regex": {"regex_pattern", "group_select", "fallback"}, "choice_answer": {"fallback"},
               **{p: {"fallback"} for p in PRESETS}}
    bad = set(args) - allowed.get(name, set())
    if bad:
        raise ValueError(f"{where}: filter {name!r} does not take {', '.join(sorted(bad))}")
    if name == "regex":
        pattern = args.get("regex_pattern", r"#### (\-?[0-9\.\,]+)")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{where}: bad regex_pattern {pattern!r}: {e}") from None
        group, fallback = int(args.get("group_select", 0)), str(args.get("fallback", FALLBACK))
        return lambda s: regex_extract(s, pattern, group, fallback)
    if name == "choice_answer":
        fallback = str(args.get("fallback", FALLBACK))
        return lambda s: choice_answer(s, fallback)
    if name in PRESETS:
        pattern, group = PRESETS[name]
        fallback = str(args.get("fallback", FALLBACK))
        return lambda s: regex_extract(s, pattern, group, fallback)
    simple = {"take_first": lambda s: s, "lowercase": str.lower, "uppercase": str.upper,
              "remove_whitespace": str.lstrip}
    if name not in simple:
        known = sorted([*simple, "regex", "choice_answer", *PRESETS])
        raise ValueError(f"{where}: unknown filter function {name!r}; known: {', '.join(known)}")
    return simple[name]


def build_pipeline(steps: list[dict], where: str = "filter_list") -> Callable[[str], str]:
    """The steps composed left to right into one str → str function."""
    fns = [_step(s, where) for s in steps]

    def run(text: str) -> str:
        for fn in fns:
            text = fn(text)
        return text

    return run
