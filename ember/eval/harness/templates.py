"""Task templates: `doc_to_text` / `doc_to_target` / `doc_to_choice` the way lm-eval reads them.

A value is one of: a field name of the documents (the field's value, as is), a Jinja
template rendered over the document in a sandbox (`ImmutableSandboxedEnvironment`: no
attribute tricks, no mutation), a list (static choices), or an int. lm-eval's conversions
follow: a rendered target or text that is all digits is an index when the task has choices;
a rendered `doc_to_choice` is a Python literal list (read with `ast.literal_eval`, which
evaluates nothing); a rendered target that looks like a list is one.

    >>> render_field("Q: {{question}}\\nA:", {"question": "2+2?"}, "doc_to_text")
    'Q: 2+2?\\nA:'
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


@lru_cache(maxsize=1)
def _env() -> ImmutableSandboxedEnvironment:
    # lm-eval's environment: undefined names are errors, a trailing newline is kept.
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = _regex_replace
    return env


def compile_template(source: str, where: str):
    """The compiled template; a syntax error names `where` (the key and its line).

    >>> compile_template("{{ x", "doc_to_text (line 3)")
    Traceback (most recent call last):
    ...
    ValueError: doc_to_text (line 3): bad template: unexpected end of template, expected 'end of print statement'.
    """
    try:
        return _env().from_string(source)
    except TemplateError as e:
        raise ValueError(f"{where}: bad template: {e}") from None


def render_field(spec, doc: dict, where: str):
    """spec (a field name, a template, a list or an int) over one document → its value.

    >>> render_field("answer", {"answer": 2}, "doc_to_target")
    2
    >>> render_field("{{ missing }}", {"q": 1}, "doc_to_text")
    Traceback (most recent call last):
    ...
    ValueError: doc_to_text: 'missing' is undefined (document fields: q)
    """
    if not isinstance(spec, str):
        return spec
    if spec in doc:
        return doc[spec]
    try:
        return compile_template(spec, where).render(**doc)
    except TemplateError as e:
        raise ValueError(f"{where}: {e} (document fields: {', '.join(doc) or 'none'})") from None


def doc_to_text(spec, doc: dict, has_choices: bool, where: str):
    """The prompt text; an index into the choices when it renders to digits and the task has them."""
    out = render_field(spec, doc, where)
    if isinstance(out, str) and spec not in doc and out.isdigit() and has_choices:
        return int(out)
    return out


def doc_to_target(spec, doc: dict, has_choices: bool, where: str):
    """The gold answer: a string, an index into the choices, or a list of either."""
    out = render_field(spec, doc, where)
    if not isinstance(out, str) or spec in doc:
        return out
    if out.isdigit() and has_choices:
        return int(out)
    if len(out) >= 2 and out[0] == "[" and out[-1] == "]":
        try:
            return ast.literal_eval(out)
        except (SyntaxError, ValueError):
            return out
    return out


def doc_to_choice(spec, doc: dict, where: str) -> list[str]:
    """The choices, a list of strings.

    >>> doc_to_choice("{{ options }}", {"options": ["a", "b"]}, "doc_to_choice")
    ['a', 'b']
    """
    if isinstance(spec, dict):
        out = list(spec.values())
    elif isinstance(spec, str) and spec not in doc:
        text = render_field(spec, doc, where)
        try:
            out = ast.literal_eval(text)
        except (SyntaxError, ValueError):
            raise ValueError(f"{where}: renders to {text[:80]!r}, not a list literal") from None
    else:
        out = render_field(spec, doc, where)
    if not isinstance(out, (list, tuple)) or not out:
        raise ValueError(f"{where}: expected a non-empty list of choices, got {out!r}")
    return [str(c) for c in out]
