"""Tool calling without a server: checks naming the bad field, prompt rendering, reading
calls back from text, and the streaming fragmenter agreeing with the plain response."""

import json
import random

import pytest
import torch

from ember.infer.chat_tools import AllOf, MinTokens, stop_suffix
from ember.infer.request import GenerationResult
from ember.infer.tool_calls import (
    ToolError,
    check_history,
    check_tools,
    parse_call,
    render_messages,
    render_prompt,
    resolve_tool_choice,
    split_calls,
    to_message,
)
from ember.infer.tool_stream import ToolCallStream

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


def _call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("call_1", "get_weather", {"city": "Paris"})]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
]


# ---- checks ------------------------------------------------------------------------------


def test_tools_without_parameters_take_none_and_names_must_be_unique():
    tools = check_tools([WEATHER, CLOCK])
    assert tools[1]["function"]["parameters"] == {"type": "object", "properties": {}}
    with pytest.raises(ToolError) as e:
        check_tools([WEATHER, CLOCK, WEATHER])
    assert e.value.param == "tools[2].function.name" and "tools[0]" in str(e.value)


@pytest.mark.parametrize("schema", [{"type": "objekt"}, {"type": "object", "required": "city"}, [1, 2]])
def test_a_parameters_schema_that_is_no_json_schema_names_its_tool(schema):
    bad = {"type": "function", "function": {"name": "f", "parameters": schema}}
    with pytest.raises(ToolError) as e:
        check_tools([WEATHER, bad])
    assert e.value.param == "tools[1].function.parameters"


def test_tool_choice_defaults_and_mistakes():
    tools = check_tools([WEATHER, CLOCK])
    assert resolve_tool_choice(tools, None) == "auto" and resolve_tool_choice([], None) == "none"
    assert resolve_tool_choice(tools, {"type": "function", "function": {"name": "get_time"}}) == "get_time"
    with pytest.raises(ToolError, match="'send_mail'.*'get_weather', 'get_time'") as e:
        resolve_tool_choice(tools, {"type": "function", "function": {"name": "send_mail"}})
    assert e.value.param == "tool_choice"
    for bad in ("any", "required"):
        with pytest.raises(ToolError) as e:
            resolve_tool_choice([] if bad == "required" else tools, bad)
        assert e.value.param == "tool_choice"


@pytest.mark.parametrize("messages, param", [
    (HISTORY[:2] + [{"role": "tool", "content": "18C"}], "messages[2].tool_call_id"),
    (HISTORY[:2] + [{"role": "tool", "tool_call_id": "call_9", "content": "18C"}], "messages[2].tool_call_id"),
    ([HISTORY[2]], "messages[0].tool_call_id"),  # answers a call that comes later, or never
    ([HISTORY[0], {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                        "function": {"name": "f", "arguments": "[1]"}}]}],
     "messages[1].tool_calls[0].function.arguments"),
    ([{"role": "user", "content": "x", "tool_calls": [_call("c", "f", {})]}], "messages[0].tool_calls"),
])
def test_a_history_that_does_not_add_up_names_the_message(messages, param):
    with pytest.raises(ToolError) as e:
        check_history(messages)
    assert e.value.param == param


# ---- the prompt ----------------------------------------------------------------------------


def test_a_template_without_tools_gets_a_system_block_and_calls_as_text():
    msgs, variables = render_messages(HISTORY, check_tools([WEATHER]), "{{ messages }}")
    assert variables == {} and [m["role"] for m in msgs] == ["system", "user", "assistant", "tool"]
    assert "<tools>\n" + json.dumps(check_tools([WEATHER])[0]) + "\n</tools>" in msgs[0]["content"]
    assert msgs[2]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert msgs[3] == {"role": "tool", "content": "18C, sunny"}
    # a system message of the client's keeps its text, the block follows it
    msgs, _ = render_messages([{"role": "system", "content": "Be brief."}, *HISTORY], check_tools([WEATHER]), "")
    assert msgs[0]["content"].startswith("Be brief.\n\n# Tools") and len(msgs) == 4


def test_a_template_that_knows_tools_gets_them_and_calls_with_object_arguments():
    from ember.tokenizer.tokenizer import Tokenizer

    template = ("{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}"
                "{% for c in m.tool_calls or [] %}<{{ c.function.name }}:{{ c.function.arguments.city }}>{% endfor %}"
                "{{ m.role }}:{{ m.content }};{% endfor %}")
    tok = Tokenizer([], pattern="gpt2", chat_template=template)
    ids = render_prompt(tok, HISTORY, check_tools([WEATHER, CLOCK]))
    assert tok.decode(ids) == ("[get_weather][get_time]user:Weather in Paris?;<get_weather:Paris>assistant:;"
                               "tool:18C, sunny;")


def test_smollm2s_template_renders_tools_calls_and_results(smollm2_tokenizer):
    text = smollm2_tokenizer.decode(render_prompt(smollm2_tokenizer, HISTORY, check_tools([WEATHER])))
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert ('<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
            '</tool_call><|im_end|>\n<|im_start|>tool\n18C, sunny<|im_end|>\n<|im_start|>assistant\n') in text


# ---- text → tool_calls ------------------------------------------------------------------------


def test_calls_keep_their_arguments_text_and_malformed_ones_stay_content():
    ok = '<tool_call>{"name":"f","arguments":{"a": [1, {"b": "}"}]}}</tool_call>'
    assert split_calls(ok) == ("", [("f", '{"a": [1, {"b": "}"}]}')])
    assert parse_call('{"arguments": {"x": 1}, "name": "f"}') == ("f", '{"x": 1}')  # other key order
    for bad in ('{"name": "f", "arguments": [1]}', '{"name": "f"}', '{"name": f}', '{"name": "f", "arguments": {}, "x": 1}'):
        assert parse_call(bad) is None, bad
    text = f'Let me check. {ok}\n<tool_call>{{"name": 1}}</tool_call> <tool_call>{{"name": "g", "arguments": {{'
    content, calls = split_calls(text)
    assert calls == [("f", '{"a": [1, {"b": "}"}]}')]
    assert content == 'Let me check. \n<tool_call>{"name": 1}</tool_call> <tool_call>{"name": "g", "arguments": {'


def test_to_message_shapes():
    msg, reason = to_message('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "stop", "auto")
    assert msg["content"] is None and reason == "tool_calls"
    assert msg["tool_calls"][0]["id"].startswith("call_") and msg["tool_calls"][0]["type"] == "function"
    assert to_message('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "stop", "none")[1] == "stop"
    assert to_message("plain", "length", "required") == ({"role": "assistant", "content": "plain"}, "length")


# ---- streaming -----------------------------------------------------------------------------

VALID = [
    '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>',
    '<tool_call>{"name":"f","arguments":{"s":"a}b</tool","n":{"m":[1,2]}}}</tool_call>\n'
    '<tool_call>{"name": "g", "arguments": {}}</tool_call>',
    '<tool_call> {"name": "é", "arguments": {"t": "中 🎉"} } </tool_call>',
]
MIXED = [
    "Just text, with a <tag> and a trailing space ",
    'Sure.\n<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>\nDone <tool',
    '<tool_call>{"name": broken}</tool_call> then <tool_call>{"name": "g", "arguments": {"y": 2}}</tool_call>',
    '  <tool_call>{"name": "f", "arguments": {}}</tool_call>   ',
    '<tool_call>{"name": "f", "arguments": {"cut": "by max_tok',
]


def _accumulate(deltas):
    """What the openai client makes of a stream's deltas: content joined, calls by index."""
    content, calls = "", {}
    for d in deltas:
        content += d.get("content", "")
        for c in d.get("tool_calls", []):
            call = calls.setdefault(c["index"], {"name": "", "arguments": ""})
            call["name"] += c["function"].get("name", "")
            call["arguments"] += c["function"].get("arguments", "")
            assert ("id" in c) == (c["function"].get("name") is not None)
    return content or None, [(c["name"], c["arguments"]) for _, c in sorted(calls.items())]


def _pieces(text, rng):
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("incremental, texts", [(True, VALID), (False, VALID + MIXED)])
def test_a_stream_accumulates_to_the_plain_message_however_the_text_is_cut(incremental, texts):
    rng = random.Random(0)
    for text in texts:
        msg, _ = to_message(text, "stop", "auto")
        want = (msg["content"] or None, [(c["function"]["name"], c["function"]["arguments"])
                                         for c in msg.get("tool_calls", [])])
        for pieces in [list(text), [text]] + [_pieces(text, rng) for _ in range(20)]:
            s = ToolCallStream(incremental)
            deltas = [d for p in pieces for d in s.push(p)] + s.finish()
            assert _accumulate(deltas) == want, (text, pieces)
            assert s.n_calls == len(want[1])


def test_incremental_streaming_sends_arguments_before_the_call_closes():
    s = ToolCallStream(incremental=True)
    deltas = s.push('<tool_call>{"name": "f", "arguments": {"city": "Par')
    assert _accumulate(deltas) == (None, [("f", '{"city": "Par')])
    assert s.push("is") and not s.push("}")  # a "}" may close the call: held back


# ---- sampling extras -------------------------------------------------------------------------


def test_min_tokens_masks_the_end_ids_until_enough_tokens_and_a_grammar_wins_at_its_end():
    m = MinTokens(2, [0, 5, 99], size=4)
    assert m.allowed().tolist() == [False, True, True, True]
    m.advance(1), m.advance(2)
    assert m.allowed().all()

    class OnlyEnd:  # a complete grammar: nothing but the end token may follow
        done = False

        def allowed(self):
            return torch.tensor([True, False, False, False])

        def advance(self, token_id):
            pass

    both = AllOf(OnlyEnd(), MinTokens(3, [0], size=4))
    assert both.allowed().tolist() == [True, False, False, False]


def test_stop_suffix_names_the_stop_string_that_ended_the_reply(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok.encode("Hello END there")

    def result(text, token_ids, reason="stop"):
        return GenerationResult(text, token_ids, reason, 1, len(token_ids), 0.0, 0.0)

    assert stop_suffix(tok, result("Hello ", ids), ["ND", "END"], {2}) == "END"
    assert stop_suffix(tok, result("Hello ", ids, "length"), ["END"], {2}) == ""
    assert stop_suffix(tok, result("Hello END there", ids + [2]), ["END"], {2}) == ""  # EOS ended it


# ---- chat(): the same turn for Python callers ------------------------------------------------


@pytest.mark.parametrize("constrained", [False, True])
def test_chat_returns_the_servers_message(constrained):
    from infer_helpers import IM_END, ScriptedModel, make_tokenizer

    from ember.infer import Engine
    from ember.infer.tool_calls import chat

    tok, msgs = make_tokenizer(), [{"role": "user", "content": "Weather in Paris?"}]
    reply = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    start = len(render_prompt(tok, msgs, check_tools([WEATHER, CLOCK])))
    engine = Engine(ScriptedModel([*reply.encode(), IM_END], start, fill=IM_END, max_seq_len=1024), tok)
    out = chat(engine, tok, msgs, tools=[WEATHER, CLOCK], tool_choice="get_weather", constrained=constrained)
    assert out["finish_reason"] == "tool_calls" and out["message"]["content"] is None
    assert out["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    with pytest.raises(ToolError, match="send_mail"):
        chat(engine, tok, msgs, tools=[WEATHER], tool_choice="send_mail")
