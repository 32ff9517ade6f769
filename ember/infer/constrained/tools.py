"""Tool calls: the grammar of `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` and
its inverse, `parse_tool_calls`.

The output format (the same as `ember.agents.tools`) is one call per tag, several calls
separated by a newline when `parallel`. `tool_choice`: "required" (at least one call, any
tool), `{"type": "function", "function": {"name": N}}` (calls of N only) or "auto" (free
text; once `<tool_call>` appears, at the start or after some text, the rest must be
valid calls).

>>> parse_tool_calls('Sure.<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
('Sure.', [{'name': 'f', 'arguments': {'x': 1}}])
"""

from __future__ import annotations

import json
import re

from .nodes import Alt, Lit, MarkerText, Node, Opt, Repeat, Seq
from .schema import compile_schema

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|$)", re.S)


def _tool_name(tool, i: int) -> tuple[str, dict]:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                         f"'parameters': {{...}}}}}}, got {tool!r}")
    params = fn.get("parameters", {"type": "object", "properties": {}, "additionalProperties": False})
    return fn["name"], params


def _call_node(name: str, params: dict, path: str) -> Node:
    from .json_nodes import Obj

    try:
        args = compile_schema(params)
    except ValueError as e:
        raise ValueError(f"{path} parameters: {e}") from None
    obj = Obj([("name", Lit(json.dumps(name, ensure_ascii=False).encode()), True),
               ("arguments", args, True)])
    return obj


def tool_calls_node(tools: list[dict], tool_choice="required", parallel: bool = True) -> Node:
    """The root node of a tool-call grammar (see the module docstring)."""
    if not isinstance(tools, list) or not tools:
        raise ValueError(f"tools must be a non-empty list, got {tools!r}")
    named = [_tool_name(t, i) for i, t in enumerate(tools)]
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must be unique, got {names}")
    mode = tool_choice
    if isinstance(tool_choice, dict):
        want = (tool_choice.get("function") or {}).get("name")
        if want not in names:
            raise ValueError(f"tool_choice names {want!r}, which is not among the tools {names}")
        named = [(n, p) for n, p in named if n == want]
        mode = "required"
    elif tool_choice not in ("required", "auto"):
        raise ValueError(f"tool_choice must be 'required', 'auto' or "
                         f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}")
    objs = [_call_node(n, p, f"tool {n!r}") for n, p in named]
    body = Seq([Alt(objs) if len(objs) > 1 else objs[0], Lit(CALL_CLOSE.encode())])
    call = Seq([Lit(CALL_OPEN.encode()), body])
    if mode != "auto":
        return Repeat(call, b"\n", 1, float("inf") if parallel else 1)
    # auto: text alone, or text (maybe none) whose first <tool_call> starts the calls
    first = [MarkerText(CALL_OPEN.encode(), text_only=False), body]
    more = [Opt(Seq([Lit(b"\n"), Repeat(call, b"\n")]))] if parallel else []
    return Alt([MarkerText(CALL_OPEN.encode(), text_only=True), Seq(first + more)])


def _parse_call(body: str) -> dict | None:
    try:
        obj = json.loads(body.strip())
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": args}


def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """(content outside the calls, [{"name", "arguments"}]) from generated text. A call that
    does not parse stays in the content; a last call missing its closing tag is accepted
    when its JSON is whole.

    >>> parse_tool_calls('<tool_call>{"name": "f"}</tool_call>\\n<tool_call>{bad}</tool_call>')
    ('<tool_call>{bad}</tool_call>', [{'name': 'f', 'arguments': {}}])
    """
    calls, content, pos = [], [], 0
    for m in _CALL_RE.finditer(text):
        call = _parse_call(m.group(1))
        if call is None:
            continue
        content.append(text[pos : m.start()])
        calls.append(call)
        pos = m.end()
    content.append(text[pos:])
    return "".join(content).strip(), calls
