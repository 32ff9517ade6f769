"""OpenAI tool calling over the engine: tools into the prompt, a decoding constraint from
the tools' schemas, generated text back into `tool_calls`.

The text format is the Hermes/Qwen one, which the constrained decoder (ember.infer.
constrained) enforces and `split_calls` reads back:

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

A chat template that knows tools (it mentions `tools`) gets them as the template variable,
and past calls as `tool_calls` with their arguments as objects (as vLLM passes them). Any
other template (SmolLM2's) gets the tools as a system block, `<tools>` JSON specs
`</tools>` and the instruction to answer in the format above; a past assistant call is
written in that format, a tool result stays a "tool" message (SmolLM2's ChatML writes
`<|im_start|>tool`). Checks of what a client sends raise `ToolError`, a ValueError that
names the bad field (`param`), which the server answers with a 400.

    >>> split_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    ('', [('f', '{"x": 1}')])
"""

from __future__ import annotations

import json
import re
import uuid

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)
# A call's head, up to where its arguments start: the raw arguments text is kept as written
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
_TAIL = re.compile(r"\s*\}\s*")
TOOLS_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>{{"name": <function-name>, "arguments": <args-json-object>}}</tool_call>'
)


class ToolError(ValueError):
    """A client's mistake in tools, tool_choice, response_format or the history; `param`
    names the field as OpenAI's error shape does ("tools[1].function.parameters")."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# ---- checks ----------------------------------------------------------------------------


def check_schema(schema, param: str) -> None:
    """A JSON Schema must be an object that jsonschema accepts (Draft 2020-12)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise ToolError(f"{param} must be a JSON Schema object", param)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        raise ToolError(f"{param} is not a valid JSON Schema: {e.message}" + (f" (at {where})" if where else ""),
                        param) from None
    except RecursionError:
        raise ToolError(f"{param} is nested too deeply", param) from None


def check_tools(tools: list[dict] | None) -> list[dict]:
    """Tools in OpenAI's shape, names unique and parameter schemas valid; a tool without
    parameters takes none ({"type": "object", "properties": {}})."""
    out, seen = [], {}
    for i, t in enumerate(tools or []):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or t.get("type") != "function" or not isinstance(fn.get("name"), str):
            raise ToolError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                            f"tools[{i}]")
        name = fn["name"]
        if name in seen:
            raise ToolError(f"tools[{i}].function.name: '{name}' is already tools[{seen[name]}]'s name",
                            f"tools[{i}].function.name")
        seen[name] = i
        params = fn.get("parameters")
        params = {"type": "object", "properties": {}} if params is None else params
        check_schema(params, f"tools[{i}].function.parameters")
        spec = {"name": name, **({"description": fn["description"]} if fn.get("description") else {}),
                "parameters": params}
        out.append({"type": "function", "function": spec})
    return out


def resolve_tool_choice(tools: list[dict], tool_choice) -> str:
    """tool_choice → "none", "auto", "required" or the name of the one function to call.
    Omitted: "auto" with tools, "none" without (as OpenAI)."""
    if tool_choice is None:
        return "auto" if tools else "none"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        names = [t["function"]["name"] for t in tools]
        if name not in names:
            known = ", ".join(repr(n) for n in names) or "none (no tools given)"
            raise ToolError(f"tool_choice names the function {name!r}, which is not among the tools: {known}",
                            "tool_choice")
        return name
    if tool_choice not in ("none", "auto", "required"):
        raise ToolError(f"tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", "
                        f"\"function\": {{\"name\": ...}}}}, got {tool_choice!r}", "tool_choice")
    if tool_choice == "required" and not tools:
        raise ToolError("tool_choice 'required' needs tools: the request has none", "tool_choice")
    return tool_choice


def check_history(messages: list[dict]) -> None:
    """Past assistant calls carry JSON-object arguments; every tool message answers one of
    them by tool_call_id."""
    ids = set()
    for i, m in enumerate(messages):
        for j, call in enumerate(m.get("tool_calls") or []):
            if m["role"] != "assistant":
                raise ToolError(f"messages[{i}]: only assistant messages carry tool_calls", f"messages[{i}].tool_calls")
            where = f"messages[{i}].tool_calls[{j}].function.arguments"
            try:
                args = json.loads(call["function"]["arguments"])
            except ValueError:
                args = None
            if not isinstance(args, dict):
                raise ToolError(f"{where} must be a JSON object as text", where)
            ids.add(call["id"])
        if m["role"] == "tool":
            ref = m.get("tool_call_id")
            if not ref:
                raise ToolError(f"messages[{i}] has role 'tool' but no tool_call_id", f"messages[{i}].tool_call_id")
            if ref not in ids:
                raise ToolError(f"messages[{i}].tool_call_id {ref!r} answers no tool call of an earlier assistant "
                                "message", f"messages[{i}].tool_call_id")


# ---- the prompt --------------------------------------------------------------------------


def knows_tools(template: str | None) -> bool:
    return bool(template) and re.search(r"\btools\b", template) is not None


def call_text(name: str, arguments: dict) -> str:
    """One call in the text format.

    >>> call_text("f", {"x": 1})
    '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    """
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + CALL_CLOSE


def render_messages(messages: list[dict], tools: list[dict], template: str | None) -> tuple[list[dict], dict]:
    """OpenAI messages (and checked tools, [] for none) → (messages, template variables)
    for `Tokenizer.render_chat`."""
    if knows_tools(template):
        out = []
        for m in messages:
            m = {**m, "content": m.get("content") or ""}
            if m.get("tool_calls"):
                m["tool_calls"] = [{**c, "function": {"name": c["function"]["name"],
                                                      "arguments": json.loads(c["function"]["arguments"])}}
                                   for c in m["tool_calls"]]
            out.append({k: v for k, v in m.items() if v is not None})
        return out, ({"tools": tools} if tools else {})
    out = []
    for m in messages:
        content = m.get("content") or ""
        if m.get("tool_calls"):
            calls = [call_text(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m["tool_calls"]]
            content = "\n".join([content, *calls] if content else calls)
        out.append({"role": m["role"], "content": content})
    if tools:
        block = TOOLS_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out, {}


def render_prompt(tokenizer, messages: list[dict], tools: list[dict]) -> list[int]:
    """Prompt ids for OpenAI messages with tools (already checked; [] for none)."""
    msgs, variables = render_messages(messages, tools, tokenizer.chat_template)
    try:
        ids, _ = tokenizer.render_chat(msgs, add_generation_prompt=True, **variables)
    except ValueError as e:  # the model's template refused these messages
        raise ToolError(str(e), "messages") from None
    return ids


# ---- the constraint ----------------------------------------------------------------------


def build_grammar(tokenizer, tools: list[dict], choice: str, parallel: bool = True, response_format=None,
                  constrained: bool = True):
    """The grammar a request decodes under, or None (free text). Tool calls (choice not
    "none") when `constrained`; else response_format json_object / json_schema. Schemas the
    decoder cannot compile raise ToolError naming them."""
    from ember.infer import constrained as C

    rf = response_format or {}
    if choice != "none":
        if rf.get("type", "text") != "text" and choice == "auto":
            raise ToolError("response_format json_object/json_schema with tools needs tool_choice 'none', "
                            "'required' or a named function (with 'auto' the reply may be either)", "response_format")
        if not constrained:
            return None
        tc = choice if choice in ("auto", "required") else {"type": "function", "function": {"name": choice}}
        try:
            return C.tool_calls(tools, tokenizer, tool_choice=tc, parallel=parallel)
        except (ValueError, RecursionError) as e:
            for i, t in enumerate(tools):  # name the tool whose schema the decoder refuses
                param = f"tools[{i}].function.parameters"
                try:
                    C.json_schema(t["function"]["parameters"], tokenizer)
                except (ValueError, RecursionError) as one:
                    raise ToolError(f"{param} cannot be used for decoding: {one}", param) from None
            raise ToolError(f"tools cannot be used for decoding: {e}", "tools") from None
    if rf.get("type") == "json_object":
        return C.json_object(tokenizer)
    if rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if schema is None:
            return C.json_object(tokenizer)
        param = "response_format.json_schema.schema"
        check_schema(schema, param)
        try:
            return C.json_schema(schema, tokenizer)
        except (ValueError, RecursionError) as e:
            raise ToolError(f"{param} cannot be used for decoding: {e}", param) from None
    return None


# ---- text → OpenAI's message --------------------------------------------------------------


def parse_call(body: str) -> tuple[str, str] | None:
    """The inside of one <tool_call> block → (name, arguments as JSON text), or None if it
    is not {"name": str, "arguments": object}. Arguments keep the text as generated.

    >>> parse_call(' {"name": "f", "arguments": {"a": [1, 2]}} ')
    ('f', '{"a": [1, 2]}')
    """
    m = _HEAD.match(body)
    if m is not None:
        try:
            name = json.loads(m.group(1))
            args, end = json.JSONDecoder().raw_decode(body, m.end())
        except ValueError:
            args = None
        if isinstance(args, dict) and _TAIL.fullmatch(body, end):
            return name, body[m.end():end]
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not (isinstance(obj, dict) and set(obj) == {"name", "arguments"} and isinstance(obj["name"], str)
            and isinstance(obj["arguments"], dict)):
        return None
    return obj["name"], json.dumps(obj["arguments"], ensure_ascii=False)


def split_calls(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Generated text → (the text outside well-formed calls, [(name, arguments JSON)]).
    A malformed or unterminated call stays in the text. The text is right-stripped: that
    is what a stream sends (it holds trailing whitespace back until more text follows)."""
    calls, parts, pos = [], [], 0
    for m in _BLOCK.finditer(text):
        call = parse_call(m.group(1))
        if call is not None:
            calls.append(call)
            parts.append(text[pos:m.start()])
            pos = m.end()
    if not calls:
        return text, []
    parts.append(text[pos:])
    return "".join(parts).rstrip(), calls


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def to_message(text: str, finish_reason: str, choice: str) -> tuple[dict, str]:
    """Generated text → (OpenAI's assistant message, finish_reason): calls become
    `tool_calls` (content null when nothing else was said), finish_reason "tool_calls"."""
    if choice == "none":
        return {"role": "assistant", "content": text}, finish_reason
    content, calls = split_calls(text)
    if not calls:
        return {"role": "assistant", "content": text}, finish_reason
    tool_calls = [{"id": call_id(), "type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
    reason = "tool_calls" if finish_reason == "stop" else finish_reason
    return {"role": "assistant", "content": content or None, "tool_calls": tool_calls}, reason


# ---- Python callers --------------------------------------------------------------------


def chat(engine, tokenizer, messages: list[dict], tools: list[dict] | None = None, tool_choice="auto",
         params=None, response_format: dict | None = None, constrained: bool = True,
         parallel_tool_calls: bool = True) -> dict:
    """One assistant turn through the engine, as `ember serve` answers it: returns
    {"message": {"role", "content", "tool_calls"?}, "finish_reason"}. messages and tools
    are OpenAI's shapes (dicts); tool_choice "none" | "auto" | "required" | a function
    name | {"type": "function", "function": {"name": ...}}. constrained=False lets the
    model write calls freely (response_format is always constrained); parallel_tool_calls=False
    allows one call at most (when constrained). The engine must be
    idle. Bad input raises ToolError (a ValueError naming the field).

    >>> chat(engine, tok, [{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
    ...      tool_choice="required")["message"]["tool_calls"][0]["function"]["name"]  # doctest: +SKIP
    'get_weather'
    """
    from .sampling import SamplingParams

    checked = check_tools(tools)
    if isinstance(tool_choice, str) and tool_choice not in ("none", "auto", "required"):
        tool_choice = {"type": "function", "function": {"name": tool_choice}}
    choice = resolve_tool_choice(checked, tool_choice)
    check_history(messages)
    ids = render_prompt(tokenizer, messages, checked if choice != "none" else [])
    grammar = build_grammar(tokenizer, checked, choice, parallel_tool_calls, response_format, constrained)
    params = params or SamplingParams(temperature=0.0, max_tokens=256)
    if grammar is None:
        result = engine.generate([ids], params)[0]
    else:
        result = engine.generate([ids], params, constraints=[grammar.start()])[0]
    message, reason = to_message(result.text, result.finish_reason, choice)
    return {"message": message, "finish_reason": reason}
