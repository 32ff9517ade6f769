"""The calculator (safe evaluation), tool-call parsing, the tool loop over a scripted engine,
and the answer checking of the tool-use evaluation."""

import json
from dataclasses import dataclass

import pytest

from ember.agents.tool_eval import called_tool, is_correct, load_eval_items, parse_numbers
from ember.agents.tools import (
    execute_tool_call,
    generate_with_tools,
    parse_tool_call,
    run_calculator,
)
from ember.data.tool_use import safe_eval, tool_call_text

# ---- safe_eval ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, value",
    [
        ("123 * 456", 56088), ("12 + 34", 46), ("12 - 345", -333), ("7 / 2", 3.5), ("7 // 2", 3),
        ("7 % 3", 1), ("2 ** 10", 1024), ("-(3 + 4) * +2", -14), ("((1))", 1), ("1.5 * 4", 6.0),
        ("123 × 456", 56088), ("10 ÷ 4", 2.5), ("5 − 8", -3), ("2^8", 256),
        ("1,234 + 1", 1235), ("1,234,567 - 1", 1234566), ("  3*3  ", 9),
    ],
)
def test_safe_eval_values(expr, value):
    assert safe_eval(expr) == value


@pytest.mark.parametrize(
    "expr, why",
    [
        ("__import__('os')", "function call"), ("x + 1", "name 'x'"), ("abs(-3)", "function call"),
        ("(1).real", "attribute"), ("'a' * 3", "only numbers"), ("True + 1", "only numbers"),
        ("2 ** 10000", "exponent"), ("10 ** 40", "too large"), ("1e400", "too large"),
        ("1 / 0", "division by zero"), ("5 % 0", "division by zero"), ("1 +", "not an arithmetic"),
        ("1 " + "+ 1 " * 100, "characters long"), ("", "empty"), ("[1, 2]", "List"),
        ("(-8) ** 0.5", "not a real number"), ("3 < 4", "Compare"), ("1 << 3", "operator LShift"),
        ("lambda: 1", "Lambda"), ("1j", "only numbers"),
    ],
)
def test_safe_eval_rejects(expr, why):
    with pytest.raises(ValueError, match=why):
        safe_eval(expr)


def test_safe_eval_bounds_every_intermediate():
    with pytest.raises(ValueError, match="too large"):
        safe_eval("(10 ** 20) * (10 ** 20) - 10 ** 20 * 10 ** 20")
    assert safe_eval("99 ** 15") == 99**15


# ---- parsing and running calls ----------------------------------------------------------------


def test_parse_tool_call():
    call = tool_call_text("2 + 2")
    assert parse_tool_call(call) == ("calculator", {"expression": "2 + 2"})
    assert parse_tool_call(f"Let me compute.\n{call}\nok") == ("calculator", {"expression": "2 + 2"})
    spaced = '<tool_call>\n  {"name": "calculator",\n "arguments": {"expression": "1"}}\n</tool_call>'
    assert parse_tool_call(spaced) == ("calculator", {"expression": "1"})
    assert parse_tool_call('<tool_call>{"name": "calculator"}</tool_call>') == ("calculator", {})
    for bad in ["no call here", "<tool_call>{not json}</tool_call>", '<tool_call>{"name": 3}</tool_call>',
                '<tool_call>["calculator"]</tool_call>', '<tool_call>{"name": "c", "arguments": "1+1"}</tool_call>',
                '<tool_call>{"name": "calculator", "arguments": {}}']:
        assert parse_tool_call(bad) is None, bad


def test_run_calculator_never_raises():
    assert run_calculator({"expression": "123 * 456"}) == "56088"
    assert run_calculator({"expression": "6 / 3"}) == "2"
    assert run_calculator({"expression": "1 / 3"}) == "0.333333333333"
    assert run_calculator({"expression": "__import__('os')"}).startswith("error: ")
    assert run_calculator({"expression": 5}).startswith("error: ")
    assert run_calculator({}).startswith("error: ")
    assert run_calculator("1+1").startswith("error: ")


def test_execute_tool_call():
    assert execute_tool_call("The answer is 4.") is None
    assert execute_tool_call(tool_call_text("3 * 3")) == "9"
    assert execute_tool_call("<tool_call>{oops</tool_call>").startswith("error: malformed")
    assert "unknown tool" in execute_tool_call('<tool_call>{"name": "rm", "arguments": {}}</tool_call>')


# ---- the loop, over a scripted engine ------------------------------------------------------------


@dataclass
class FakeResult:
    text: str
    token_ids: list
    finish_reason: str


class FakeTokenizer:
    """render_chat returns the conversation as JSON (so the engine can read it back)."""

    eos_token_ids = {0}

    def render_chat(self, messages, add_generation_prompt=True):
        assert add_generation_prompt
        return json.dumps(messages), None


class FakeEngine:
    """Replies from a script keyed by the user's question: the k-th reply of a conversation is
    the k-th entry. A reply ending in "</tool_call>" is cut there (as stop strings are) and
    ends on a non-EOS token; any other ends on EOS."""

    max_seq_len = 10_000

    def __init__(self, script):
        self.script, self.calls = script, []

    def generate(self, prompts, params):
        assert params.temperature == 0 and "</tool_call>" in params.stop
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            msgs = json.loads(p)
            reply = self.script[msgs[1]["content"]][sum(m["role"] == "assistant" for m in msgs)]
            if reply.endswith("</tool_call>"):
                out.append(FakeResult(reply.removesuffix("</tool_call>"), [5, 6], "stop"))
            else:
                out.append(FakeResult(reply, [5, 0], "stop"))
        return out


def _conv(question):
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": question}]


def test_generate_with_tools_runs_calls_and_feeds_results():
    script = {
        "q1": [tool_call_text("12 * 34"), "The answer is 408."],
        "q2": ["The answer is 5."],
        "q3": ["<tool_call>{broken</tool_call>", tool_call_text("2 + 2"), "The answer is 4."],
        "q4": [tool_call_text("1 + 1")] * 5,
    }
    engine = FakeEngine(script)
    inputs = [_conv(q) for q in script]
    out = generate_with_tools(engine, FakeTokenizer(), inputs, max_rounds=3)
    assert all(len(c) == 2 for c in inputs)  # inputs untouched
    q1, q2, q3, q4 = (c[2:] for c in out)
    assert q1 == [
        {"role": "assistant", "content": tool_call_text("12 * 34")},  # the closing tag is put back
        {"role": "tool", "content": "408"},
        {"role": "assistant", "content": "The answer is 408."},
    ]
    assert q2 == [{"role": "assistant", "content": "The answer is 5."}]
    assert [m["role"] for m in q3] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert q3[1]["content"].startswith("error: malformed") and q3[3]["content"] == "4"
    # Still calling after max_rounds replies: ends on its last call, no tool message after it.
    assert [m["role"] for m in q4] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert engine.calls == [4, 3, 2]  # batched: every open conversation in one call per round


def test_generate_with_tools_keeps_an_unclosed_call_ended_by_eos():
    class EosEngine(FakeEngine):
        def generate(self, prompts, params):
            return [FakeResult('<tool_call>{"name": "calculator"', [5, 0], "stop") for _ in prompts]

    out = generate_with_tools(EosEngine({}), FakeTokenizer(), [_conv("q")], max_rounds=2)
    assert out[0][2]["content"] == '<tool_call>{"name": "calculator"'  # no tag invented
    assert out[0][3]["content"].startswith("error: malformed")


def test_generate_with_tools_skips_conversations_that_do_not_fit():
    engine = FakeEngine({"q": ["x"]})
    engine.max_seq_len = 10
    out = generate_with_tools(engine, FakeTokenizer(), [_conv("q")])
    assert out == [_conv("q")] and engine.calls == []


# ---- answer checking -------------------------------------------------------------------------


def _answered(text):
    return [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]


def test_parse_numbers():
    assert parse_numbers("The answer is 56088.") == [56088.0]
    assert parse_numbers("12 - 345 = -333") == [12.0, 345.0, -333.0]
    assert parse_numbers("5-3=2") == [5.0, 3.0, 2.0]
    assert parse_numbers("1,234,567.5 and −7 and (2)-1") == [1234567.5, -7.0, 2.0, 1.0]
    assert parse_numbers("no digits") == []


def test_is_correct_uses_the_last_number_of_the_final_answer():
    assert is_correct(_answered("123 × 456 = 56088."), 56088)
    assert is_correct(_answered("The answer is -333."), -333)
    assert is_correct(_answered("It is 56,088"), 56088)
    assert is_correct(_answered("It is 2.5000000001"), 2.5)
    assert not is_correct(_answered("56088 is more than 5"), 56088)
    assert not is_correct(_answered("no number"), 1)
    ends_on_call = _answered(tool_call_text("2 + 2")) + [{"role": "tool", "content": "4"}]
    assert not is_correct(ends_on_call, 4)
    assert not is_correct(_answered(tool_call_text("2 + 2")), 2)
    assert called_tool(ends_on_call) and not called_tool(_answered("4"))


def test_load_eval_items(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "2+2?", "answer": 4}\n\n{"question": "1/2?", "answer": 0.5}\n')
    assert load_eval_items(good) == [{"question": "2+2?", "answer": 4}, {"question": "1/2?", "answer": 0.5}]
    for line, why in [("{oops", "not valid JSON"), ("[1]", "expected an object"),
                      ('{"question": "", "answer": 1}', "question"), ('{"question": "q", "answer": "4"}', "answer"),
                      ('{"question": "q", "answer": true}', "answer")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"question": "ok", "answer": 1}\n' + line + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{why}"):
            load_eval_items(bad)
