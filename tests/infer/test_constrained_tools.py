"""Tool-call grammars (required, named, auto, parallel) and parse_tool_calls."""

import json

import jsonschema
import pytest
import torch
from constrained_helpers import brute_mask, random_walk, smollm2

from ember.infer.constrained import parse_tool_calls, tool_calls

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, "required": ["city"]},
}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]},
}}
NOARGS = {"type": "function", "function": {"name": "now"}}
TOOLS = [WEATHER, ADD, NOARGS]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in TOOLS}


def call(name, args):
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


def check_calls(text, allowed_names):
    content, calls = parse_tool_calls(text)
    assert content == "" and calls, text
    for c in calls:
        assert c["name"] in allowed_names
        jsonschema.validate(c["arguments"], SCHEMAS[c["name"]])
    return calls


def test_required_accepts_valid_calls_only():
    g = tool_calls(TOOLS, smollm2())
    one = call("get_weather", {"city": "Paris", "unit": "C"})
    assert g.matches(one)
    assert g.matches(one + "\n" + call("add", {"a": 1, "b": 2.5}) + "\n" + call("now", {}))
    assert not g.matches("")  # at least one call
    assert not g.matches("Sure! " + one)
    assert not g.matches(call("get_weather", {"unit": "C"}))  # city is required
    assert not g.matches(call("delete_all", {}))
    assert not g.matches(call("now", {"x": 1}))  # no parameters: no arguments


@pytest.mark.parametrize("seed", range(4))
def test_required_random_walks_are_valid_calls(seed):
    text = random_walk(tool_calls(TOOLS, smollm2()).start(), seed, n_random=15)
    check_calls(text, set(SCHEMAS))


def test_named_tool_and_no_parallel():
    choice = {"type": "function", "function": {"name": "add"}}
    g = tool_calls(TOOLS, smollm2(), tool_choice=choice, parallel=False)
    assert g.matches(call("add", {"a": 1, "b": 2}))
    assert not g.matches(call("get_weather", {"city": "x"}))
    assert not g.matches(call("add", {"a": 1, "b": 2}) + "\n" + call("add", {"a": 1, "b": 2}))
    c = g.start()
    for t in smollm2().encode(call("add", {"a": 1, "b": 2})):
        c.advance(t)
    assert c.done  # one call and nothing may follow
    for seed in range(3):
        calls = check_calls(random_walk(g.start(), seed), {"add"})
        assert len(calls) == 1


def test_auto_free_text_or_valid_calls():
    g = tool_calls(TOOLS, smollm2(), tool_choice="auto")
    assert g.matches("The weather is nice.") and g.matches("<tool") and g.matches("")
    assert g.matches("a <tool_cal> b")  # not the marker: still text
    assert g.matches(call("now", {}))
    assert g.matches("Let me look.\n" + call("now", {}) + "\n" + call("add", {"a": 1, "b": 2}))
    assert not g.matches("<tool_call>{garbage}</tool_call>")  # a started call must be valid
    assert not g.matches("Sure: <tool_call>{garbage}")  # after text too
    assert not g.matches('<tool_call>{"name": "now", "arguments": {}}')  # and closed
    assert not g.matches(call("now", {}) + " and more text")  # calls end the reply
    c = g.start()
    assert c.allowed().sum() > 40000  # free text: nearly the whole vocabulary
    for seed in range(3):
        content, calls = parse_tool_calls(random_walk(g.start(), seed, n_random=30))
        assert "<tool_call>" not in content  # every call that started parsed
        c = g.start()
        for t in smollm2().encode("Sure.\n<tool_call>"):
            c.advance(t)
        content, calls = parse_tool_calls(random_walk(c, seed, n_random=10))
        assert content == "Sure." and calls == check_calls(c.text()[len("Sure.\n"):], set(SCHEMAS))


@pytest.mark.parametrize("prefix", ["", "<tool", "<tool_call>", "Hello <tool_call>", "Hi <tool_", "x <<tool_ca"])
def test_auto_masks_equal_brute_force(prefix):
    tok = smollm2()
    c = tool_calls(TOOLS, tok, tool_choice="auto").start()
    for t in tok.encode(prefix):
        c.advance(t)
    assert torch.equal(c.allowed(), brute_mask(c))


def test_tool_errors_name_the_bad_value():
    tok = smollm2()
    with pytest.raises(ValueError, match="tools must be a non-empty list"):
        tool_calls([], tok)
    with pytest.raises(ValueError, match=r"tools\[0\]"):
        tool_calls([{"type": "function"}], tok)
    with pytest.raises(ValueError, match="'nope', which is not among the tools"):
        tool_calls(TOOLS, tok, tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValueError, match="tool_choice must be"):
        tool_calls(TOOLS, tok, tool_choice="sometimes")
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "string", "pattern": "x"}}}
    with pytest.raises(ValueError, match="tool 'f' parameters.*'pattern'"):
        tool_calls([bad], tok)


@pytest.mark.parametrize("text,content,calls", [
    ("plain answer", "plain answer", []),
    (call("add", {"a": 1, "b": 2}), "", [{"name": "add", "arguments": {"a": 1, "b": 2}}]),
    ("Let me check.\n" + call("now", {}) + "\n" + call("add", {"a": 1, "b": 2}), "Let me check.",
     [{"name": "now", "arguments": {}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]),
    ('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>', "",
     [{"name": "f", "arguments": {"x": 1}}]),  # arguments as a JSON string
    ('<tool_call>{"name": "f", "arguments": {}}', "", [{"name": "f", "arguments": {}}]),  # unclosed
    ("<tool_call>{oops}</tool_call>", "<tool_call>{oops}</tool_call>", []),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
     '<tool_call>{"name": "f", "arguments": [1]}</tool_call>', []),
])
def test_parse_tool_calls(text, content, calls):
    assert parse_tool_calls(text) == (content, calls)
