"""Tools as typed Python functions: `@tool` derives the OpenAI function spec, and a `Toolbox`
validates a call's arguments against it, runs the tool and gates side effects.

The JSON Schema comes from the type hints (str, int, float, bool, Literal → enum, list[T],
dict[str, T], Optional / unions, nested TypedDict and dataclasses); the description from
the docstring's summary, each parameter's from its `Args:` section.

>>> @tool
... def add(a: int, b: int = 0) -> int:
...     '''Add two integers.
...
...     Args:
...         a: the first addend.
...         b: the second addend.
...     '''
...     return a + b
>>> add.spec()["function"]["parameters"]["properties"]["a"]
{'type': 'integer', 'description': 'the first addend.'}
>>> Toolbox([add]).call("add", {"a": "2"})
"error: invalid arguments for add: '2' is not of type 'integer' (at a)"
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import jsonschema

_PRIMITIVES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
MAX_OBSERVATION_CHARS = 4000


@dataclass(frozen=True)
class Tool:
    """A function the model may call, with its OpenAI function spec."""

    name: str
    description: str
    parameters: dict
    fn: Callable = field(repr=False)
    side_effects: bool = False

    def spec(self) -> dict:
        """The OpenAI `tools` entry: {"type": "function", "function": {...}}."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def tool(fn: Callable | None = None, *, name: str | None = None, side_effects: bool = False):
    """Decorator: a typed, documented function → a `Tool` (still callable as before).
    `side_effects=True` marks a tool that changes the world; a `Toolbox` runs it only when
    the user's request allowed it."""
    def wrap(f: Callable) -> Tool:
        summary, arg_docs = parse_docstring(inspect.getdoc(f) or "")
        if not summary:
            raise ValueError(f"the tool {f.__name__!r} needs a docstring (its summary is the description)")
        return Tool(name or f.__name__, summary, function_schema(f, arg_docs), f, side_effects)
    return wrap if fn is None else wrap(fn)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, {parameter: description}) from a Google-style docstring.

    >>> parse_docstring("Sum.\\n\\nMore.\\n\\nArgs:\\n    x (int): the x,\\n        continued.\\n")
    ('Sum.', {'x': 'the x, continued.'})
    """
    blocks = doc.strip().split("\n\n")
    summary = " ".join(blocks[0].split()) if blocks and not blocks[0].startswith("Args:") else ""
    args: dict[str, str] = {}
    m = re.search(r"^Args:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", doc, re.MULTILINE)
    if m:
        current = None
        for line in m.group(1).splitlines():
            head = re.match(r"\s{1,8}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", line)
            indent = len(line) - len(line.lstrip())
            if head and (current is None or indent <= _indent_of(m.group(1))):
                current = head.group(1)
                args[current] = head.group(2).strip()
            elif current and line.strip():
                args[current] = f"{args[current]} {line.strip()}".strip()
    return summary, args


def _indent_of(block: str) -> int:
    first = next((ln for ln in block.splitlines() if ln.strip()), "")
    return len(first) - len(first.lstrip())


def function_schema(fn: Callable, arg_docs: dict[str, str] | None = None) -> dict:
    """The JSON Schema of a function's parameters (an object; defaults make them optional)."""
    hints = typing.get_type_hints(fn)
    props, required = {}, []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(f"the tool {fn.__name__!r} cannot take *{p.name}: every parameter needs a type")
        if p.name not in hints:
            raise ValueError(f"the parameter {p.name!r} of {fn.__name__!r} has no type hint")
        s = json_schema(hints[p.name])
        if arg_docs and p.name in arg_docs:
            s["description"] = arg_docs[p.name]
        if p.default is p.empty:
            required.append(p.name)
        elif _jsonable(p.default):
            s["default"] = p.default
        props[p.name] = s
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def json_schema(tp: Any) -> dict:
    """The JSON Schema of one Python type.

    >>> json_schema(list[Literal["a", "b"]])
    {'type': 'array', 'items': {'type': 'string', 'enum': ['a', 'b']}}
    >>> json_schema(int | None)
    {'anyOf': [{'type': 'integer'}, {'type': 'null'}]}
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _PRIMITIVES or tp is None:
        return {"type": _PRIMITIVES[type(None) if tp is None else tp]}
    if origin is Literal:
        kinds = {_PRIMITIVES.get(type(a)) for a in args}
        return ({"type": kinds.pop()} if len(kinds) == 1 else {}) | {"enum": list(args)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [json_schema(a) for a in args]}
    if origin is list or tp is list:
        return {"type": "array"} | ({"items": json_schema(args[0])} if args else {})
    if origin is dict or tp is dict:
        if args and args[0] is not str:
            raise ValueError(f"JSON object keys are strings, not {args[0]!r}")
        return {"type": "object"} | ({"additionalProperties": json_schema(args[1])} if args else {})
    if typing.is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        return {"type": "object", "properties": {k: json_schema(v) for k, v in hints.items()},
                "required": sorted(tp.__required_keys__), "additionalProperties": False}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = dataclasses.fields(tp)
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        return {"type": "object", "properties": {f.name: json_schema(hints[f.name]) for f in fields},
                "required": required, "additionalProperties": False}
    raise ValueError(f"no JSON Schema for the type {tp!r} (use str, int, float, bool, Literal, list, "
                     "dict, Optional, a TypedDict or a dataclass)")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def _coerce(tp: Any, value: Any) -> Any:
    """A validated JSON value → the annotated Python value (dataclasses built, recursively)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _coerce(hints[k], v) for k, v in value.items()})
    if (origin is list) and args and isinstance(value, list):
        return [_coerce(args[0], v) for v in value]
    if origin in (Union, types.UnionType):
        for a in args:
            try:
                jsonschema.validate(value, json_schema(a))
            except jsonschema.ValidationError:
                continue
            return _coerce(a, value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class Toolbox:
    """The tools an agent may call. `call` never raises for the model's mistakes: unknown
    tools, malformed or schema-violating arguments, a tool's exception, and a refused side
    effect all come back as an "error: ..." observation.

    A tool with side effects runs only if its name is in `allow` (what the user's request
    asked for, fixed before the agent starts) or `confirm(name, arguments)` returns True.
    Nothing the model reads (retrieved text, tool output) can widen `allow`.
    """

    def __init__(self, tools: Iterable[Tool], allow: Iterable[str] = (),
                 confirm: Callable[[str, dict], bool] | None = None):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            if not isinstance(t, Tool):
                raise ValueError(f"not a tool (decorate it with @tool): {t!r}")
            if t.name in self.tools:
                raise ValueError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t
        self.allow = frozenset(allow)
        unknown = sorted(self.allow - set(self.tools))
        if unknown:
            raise ValueError(f"allow names unknown tools: {', '.join(unknown)} (known: {', '.join(self.tools)})")
        self.confirm = confirm
        self._validators = {n: jsonschema.Draft202012Validator(t.parameters) for n, t in self.tools.items()}

    def specs(self) -> list[dict]:
        return [t.spec() for t in self.tools.values()]

    def call(self, name: str, arguments: dict | str) -> str:
        """Run one call and return the observation the model reads."""
        if name not in self.tools:
            return f'error: unknown tool "{name}" (available: {", ".join(self.tools)})'
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError as e:
                return f"error: the arguments of {name} are not valid JSON ({e})"
        errors = sorted(self._validators[name].iter_errors(arguments), key=lambda e: list(e.path))
        if errors:
            e = jsonschema.exceptions.best_match(errors)
            where = f" (at {'.'.join(map(str, e.path))})" if e.path else ""
            return f"error: invalid arguments for {name}: {e.message}{where}"
        t = self.tools[name]
        if t.side_effects and name not in self.allow and not (self.confirm and self.confirm(name, arguments)):
            return (f"error: {name} has side effects and the user did not ask for it; "
                    "it was not run (only the user's request or a confirmation can allow it)")
        hints = typing.get_type_hints(t.fn)
        try:
            out = t.fn(**{k: _coerce(hints[k], v) for k, v in arguments.items()})
        except Exception as e:  # the model reads what went wrong and may try again
            return f"error: {name} failed: {e}" if isinstance(e, ValueError) else \
                f"error: {name} failed ({type(e).__name__}: {e})"
        text = out if isinstance(out, str) else json.dumps(out, ensure_ascii=False, default=str)
        if len(text) > MAX_OBSERVATION_CHARS:
            text = text[:MAX_OBSERVATION_CHARS] + f"... [truncated, {len(text)} characters]"
        return text


def requested_tools(task: str, tools: Iterable[Tool]) -> set[str]:
    """The side-effect tools the user's own words name (whole-word match of the tool name).

    >>> @tool(side_effects=True)
    ... def delete_file(path: str) -> str:
    ...     '''Delete a file.'''
    >>> requested_tools("please delete_file notes.txt", [delete_file])
    {'delete_file'}
    """
    return {t.name for t in tools
            if t.side_effects and re.search(rf"(?<!\w){re.escape(t.name)}(?!\w)", task)}
