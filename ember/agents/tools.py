"""Tools the model may call, and generation that executes its calls.

A reply holding `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the format of
`ember.data.tool_use`) is answered by a "tool" message with the tool's output; anything a
tool or a malformed call gets wrong comes back to the model as an `error: ...` string, never
as an exception, so the model can read it and try again.

    >>> convs = generate_with_tools(engine, tok, [[{"role": "system", "content": TOOL_SYSTEM_PROMPT},
    ...                                            {"role": "user", "content": "What is 12 * 34?"}]])  # doctest: +SKIP
    >>> [m["role"] for m in convs[0][2:]]  # doctest: +SKIP
    ['assistant', 'tool', 'assistant']
"""

from __future__ import annotations

import json
import re

from ember.data.tool_use import format_number, safe_eval
from ember.infer.sampling import SamplingParams

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)


def parse_tool_call(text: str) -> tuple[str, dict] | None:
    """(name, arguments) of the first well-formed tool call in text, else None (no call, or
    one whose JSON is malformed or lacks a string "name" / an object "arguments").

    >>> parse_tool_call('Sure. <tool_call> {"name": "calculator", "arguments": {}} </tool_call>')
    ('calculator', {})
    >>> parse_tool_call('<tool_call>{"name": calculator}</tool_call>') is None
    True
    """
    m = _CALL.search(text)
    if m is None:
        return None
    try:
        call = json.loads(m.group(1))
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    if not isinstance(arguments, dict):
        return None
    return call["name"], arguments


def run_calculator(arguments: dict) -> str:
    """The calculator tool: {"expression": "..."} → its value as text, or "error: ...".

    >>> run_calculator({"expression": "123 * 456"}), run_calculator({"expression": "1/0"})
    ('56088', 'error: division by zero')
    """
    if not isinstance(arguments, dict) or not isinstance(arguments.get("expression"), str):
        return 'error: the calculator takes {"expression": "<arithmetic>"}'
    try:
        return format_number(safe_eval(arguments["expression"]))
    except ValueError as e:
        return f"error: {e}"


TOOLS = {"calculator": run_calculator}


def execute_tool_call(text: str) -> str | None:
    """The tool message answering a reply: None if the reply calls no tool, else the tool's
    output or an "error: ..." the model can read (malformed call, unknown tool, bad input).

    >>> execute_tool_call('<tool_call>{"name": "search", "arguments": {}}</tool_call>')
    'error: unknown tool "search" (available: calculator)'
    """
    if CALL_OPEN not in text:
        return None
    parsed = parse_tool_call(text)
    if parsed is None:
        return ('error: malformed tool call; write <tool_call>{"name": "calculator", '
                '"arguments": {"expression": "..."}}</tool_call>')
    name, arguments = parsed
    if name not in TOOLS:
        return f'error: unknown tool "{name}" (available: {", ".join(TOOLS)})'
    try:
        return TOOLS[name](arguments)
    except Exception as e:  # a tool's bug must not end the whole batch
        return f"error: the tool {name} failed ({type(e).__name__}: {e})"


def generate_with_tools(
    engine, tok, conversations: list[list[dict]], max_rounds: int = 3, max_tokens: int = 96
) -> list[list[dict]]:
    """Continue every conversation greedily, running the tools it calls; batched per round.

    Each round renders the still-open conversations, generates one assistant reply each
    (stopping at `</tool_call>`), and for a reply that calls a tool appends the reply and a
    "tool" message with the result; a reply without a call closes its conversation. A
    conversation still calling tools after max_rounds replies ends on its last call, with no
    tool message after it. Returns new lists (the inputs are not modified).
    """
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    convs = [list(c) for c in conversations]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=(CALL_CLOSE,))
    eos_ids = set(getattr(tok, "eos_token_ids", ()))
    limit = getattr(engine, "max_seq_len", None)
    open_ = list(range(len(convs)))
    for round_ in range(max_rounds):
        prompts = {k: tok.render_chat(convs[k], add_generation_prompt=True)[0] for k in open_}
        # A conversation that no longer fits the context ends here rather than fail the batch.
        open_ = [k for k in open_ if limit is None or len(prompts[k]) + max_tokens <= limit]
        if not open_:
            break
        results = engine.generate([prompts[k] for k in open_], params)
        still_open = []
        for k, r in zip(open_, results):
            text = r.text
            # The engine cuts a stop string out of the text: put the closing tag back when it
            # was the stop string (not EOS) that ended an open call.
            stopped_on_tag = r.finish_reason == "stop" and not (r.token_ids and r.token_ids[-1] in eos_ids)
            if stopped_on_tag and CALL_OPEN in text and CALL_CLOSE not in text:
                text += CALL_CLOSE
            convs[k].append({"role": "assistant", "content": text.strip()})
            reply = execute_tool_call(text)
            if reply is not None and round_ + 1 < max_rounds:
                convs[k].append({"role": "tool", "content": reply})
                still_open.append(k)
        open_ = still_open
    return convs
