"""`ember serve`'s tools, tool_choice, response_format and extra sampling fields through the
official `openai` client, against live servers: a tiny random model wearing SmolLM2's
tokenizer (constrained decoding over the real vocabulary: whatever it samples must be a
valid call), and a scripted model on a byte tokenizer (exact replies, free decoding)."""

import json
import re

import jsonschema
import pytest
from infer_helpers import IM_END, LiveServer, ScriptedModel, make_tokenizer

MODEL = "tiny-smollm2"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "when": {"type": "object", "properties": {"day": {"enum": ["today", "tomorrow"]}, "hourly": {"type": "boolean"}},
                 "required": ["day", "hourly"]}},
        "required": ["city", "unit", "when"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}},
                                       "required": ["tz"]}}}
TOOLS = [WEATHER, CLOCK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "Is it warm in Rome tomorrow?"}]


class Live(LiveServer):
    def __init__(self, app):
        import httpx
        from openai import OpenAI

        super().__init__(app)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self.client = OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60)

    def chat(self, messages=ASK, **kw):
        kw = {"model": MODEL, "temperature": 0, "max_tokens": 200, **kw}
        return self.client.chat.completions.create(messages=messages, **kw)

    def close(self):
        self.http.close()
        super().close()


@pytest.fixture(scope="module")
def live(smollm2_tokenizer):
    import torch

    from ember.infer import Engine
    from ember.infer.server import create_app
    from ember.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=1024)
    srv = Live(create_app(Engine(Transformer(cfg).eval(), smollm2_tokenizer, max_batch_size=4), MODEL))
    yield srv
    srv.close()


def _valid_calls(message) -> list[tuple[str, dict]]:
    out = []
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        out.append((call.function.name, args))
    return out


def _accumulate(stream):
    """A stream as the openai client's users put it together: content, calls by index."""
    content, calls, reasons = "", {}, []
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for c in ch.delta.tool_calls or []:
                call = calls.setdefault(c.index, {"id": c.id, "name": "", "arguments": ""})
                call["name"] += c.function.name or ""
                call["arguments"] += c.function.arguments or ""
            reasons += [ch.finish_reason] if ch.finish_reason else []
    return content, [calls[i] for i in sorted(calls)], reasons


# ---- constrained: the real vocabulary, a model that knows nothing ------------------------


def test_required_calls_always_parse_and_validate(live):
    r = live.chat(tools=TOOLS, tool_choice="required", temperature=1.0, seed=3, n=4, parallel_tool_calls=False)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(_valid_calls(choice.message)) == 1


def test_a_named_function_is_the_one_called(live):
    r = live.chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=1.0,
                  seed=1, n=3)
    for choice in r.choices:
        assert {name for name, _ in _valid_calls(choice.message)} == {"get_time"}


def test_a_streamed_call_accumulates_to_the_plain_one(live):
    kw = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
    plain = live.chat(**kw).choices[0].message.tool_calls[0]
    content, calls, reasons = _accumulate(live.chat(stream=True, **kw))
    assert content == "" and reasons == ["tool_calls"] and len(calls) == 1
    assert (calls[0]["name"], calls[0]["arguments"]) == (plain.function.name, plain.function.arguments)
    assert calls[0]["id"].startswith("call_")


def test_auto_gives_text_or_valid_calls(live):
    r = live.chat(tools=TOOLS, temperature=1.0, seed=5, n=4, max_tokens=40)
    for choice in r.choices:
        if choice.message.tool_calls:
            _valid_calls(choice.message)
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.content


def test_response_format_constrains_the_reply(live):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"]}
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    r = live.chat(response_format=rf, temperature=1.0, seed=2, n=3)
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)
    r = live.chat(response_format={"type": "json_object"}, max_tokens=200, temperature=0.7, seed=0)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert live.chat(response_format={"type": "text"}, max_tokens=5).choices[0].message.content


def test_a_history_of_calls_and_results_is_accepted(live):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "24C"}]
    r = live.chat(messages=history, tools=TOOLS, tool_choice="none", max_tokens=5)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "length"


def test_vllms_guided_fields_constrain_chat_and_completions(live):
    r = live.chat(temperature=1.0, seed=4, n=3, extra_body={"guided_choice": ["yes", "no", "maybe not"]})
    assert {c.message.content for c in r.choices} <= {"yes", "no", "maybe not"}
    r = live.chat(temperature=1.0, seed=4, n=3, extra_body={"guided_regex": "[0-9]{3}-[a-z]{2}"})
    for c in r.choices:
        assert re.fullmatch("[0-9]{3}-[a-z]{2}", c.message.content)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = live.client.completions.create(model=MODEL, prompt="JSON:", max_tokens=60, temperature=1.0, seed=1, n=2,
                                       extra_body={"guided_json": schema})
    for c in r.choices:
        jsonschema.validate(json.loads(c.text), schema)


# ---- bad input: 400s naming the field ----------------------------------------------------------

BAD_SCHEMA = {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}
PATTERN = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}}
TOOL_MSG = {"role": "tool", "content": "24C"}


@pytest.mark.parametrize("patch, param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "send_mail"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "any"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, BAD_SCHEMA]}, "tools[1].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [WEATHER, PATTERN]}, "tools[1].function.parameters"),  # valid, but the decoder lacks `pattern`
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"messages": ASK + [TOOL_MSG]}, "messages[1].tool_call_id"),
    ({"messages": ASK + [{**TOOL_MSG, "tool_call_id": "call_404"}]}, "messages[1].tool_call_id"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"typical_p": 0.5}, "typical_p"),
    ({"use_beam_search": True}, "use_beam_search"),
    ({"skip_special_tokens": True}, "skip_special_tokens"),
    ({"best_of": 3}, "best_of"),
    ({"stop_token_ids": [10**6]}, "stop_token_ids[0]"),
    ({"min_tokens": 50, "max_tokens": 10}, "min_tokens"),
    ({"guided_regex": "(?<=a)b"}, "guided_regex"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_json": {"type": "objekt"}}, "guided_json"),
    ({"guided_choice": ["a"], "response_format": {"type": "json_object"}}, "guided_choice"),
    ({"guided_choice": ["a"], "tools": TOOLS}, "tool_choice"),
])
def test_bad_tool_and_sampling_requests_are_400_naming_the_field(live, patch, param):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **patch}
    r = live.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_neutral_values_of_unsupported_fields_are_accepted(live):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 2, "logit_bias": {}, "typical_p": 1.0,
            "use_beam_search": False, "best_of": 1, "skip_special_tokens": False}
    assert live.http.post("/v1/chat/completions", json=body).status_code == 200


# ---- a scripted model: free decoding, exact replies ----------------------------------------------


def _scripted(messages, reply: str | list[int], tools=()):
    """A server whose model answers `messages` (with `tools`) with `reply` then EOS."""
    from ember.infer import Engine
    from ember.infer.server import create_app
    from ember.infer.tool_calls import check_tools, render_prompt

    tok = make_tokenizer()
    start = len(render_prompt(tok, messages, check_tools(list(tools))))
    script = (list(reply.encode()) + [IM_END]) if isinstance(reply, str) else reply
    engine = Engine(ScriptedModel(script, start, fill=IM_END, max_seq_len=2048), tok, max_batch_size=2)
    return Live(create_app(engine, MODEL))


CALL_TEXT = ('Checking.\n<tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call>\n'
             '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius", '
             '"when": {"day": "today", "hourly": false}}}</tool_call>')


@pytest.mark.parametrize("constrained", [False, True])
def test_calls_written_by_the_model_come_back_as_tool_calls(constrained):
    srv = _scripted(ASK, CALL_TEXT if not constrained else CALL_TEXT.split("\n", 1)[1], TOOLS)
    try:
        kw = {"tools": TOOLS, "max_tokens": 300, "extra_body": {"constrained_tools": constrained}}
        msg = srv.chat(**kw).choices[0]
        assert msg.finish_reason == "tool_calls"
        assert msg.message.content == (None if constrained else "Checking.")
        assert [(n, a["tz"] if n == "get_time" else a["city"]) for n, a in _valid_calls(msg.message)] == \
               [("get_time", "CET"), ("get_weather", "Oslo")]
        content, calls, reasons = _accumulate(srv.chat(stream=True, **kw))
        assert content == (msg.message.content or "") and reasons == ["tool_calls"]
        assert [(c["name"], c["arguments"]) for c in calls] == \
               [(c.function.name, c.function.arguments) for c in msg.message.tool_calls]
    finally:
        srv.close()


def test_tool_choice_none_leaves_call_text_as_content_and_the_tools_out_of_the_prompt():
    text = '<tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call>'
    srv = _scripted(ASK, text)  # scripted for the prompt without tools
    try:
        r = srv.chat(tools=TOOLS, tool_choice="none", max_tokens=100).choices[0]
        assert r.message.content == text and r.message.tool_calls is None and r.finish_reason == "stop"
    finally:
        srv.close()


def test_a_malformed_call_stays_content_when_unconstrained():
    text = '<tool_call>{"name": "get_time", "arguments": {"tz": CET}}</tool_call>'
    srv = _scripted(ASK, text, TOOLS)
    try:
        r = srv.chat(tools=TOOLS, max_tokens=100, extra_body={"constrained_tools": False}).choices[0]
        assert r.message.content == text and r.message.tool_calls is None and r.finish_reason == "stop"
    finally:
        srv.close()


def test_min_tokens_ignore_eos_stop_token_ids_and_the_stop_string():
    from ember.infer.tool_calls import render_prompt

    srv = _scripted(ASK, "hello END world")
    try:
        r = srv.chat(max_tokens=40)
        assert r.choices[0].message.content == "hello END world" and r.usage.completion_tokens == 16
        r = srv.chat(max_tokens=40, stop=["END"], extra_body={"include_stop_str_in_output": True})
        assert r.choices[0].message.content == "hello END"
        content, _, reasons = _accumulate(srv.chat(max_tokens=40, stop=["END"], stream=True,
                                                   extra_body={"include_stop_str_in_output": True}))
        assert content == "hello END" and reasons == ["stop"]
        r = srv.chat(max_tokens=40, extra_body={"stop_token_ids": [ord("l")]})
        assert r.choices[0].message.content == "he" and r.choices[0].finish_reason == "stop"
        r = srv.chat(max_tokens=20, extra_body={"min_tokens": 18})  # the reply is 16 tokens with its EOS
        assert r.usage.completion_tokens == 19 and r.choices[0].message.content.startswith("hello END world")
        assert r.choices[0].finish_reason == "stop"
        r = srv.chat(max_tokens=20, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"
        ids = render_prompt(make_tokenizer(), ASK, [])  # the same reply through /v1/completions
        c = srv.client.completions.create(model=MODEL, prompt=ids, max_tokens=20, extra_body={"min_tokens": 17})
        assert c.usage.completion_tokens == 18 and c.choices[0].text.startswith("hello END world")
    finally:
        srv.close()
