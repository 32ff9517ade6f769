"""The calculator tool-use data: well-formed conversations, disjoint phrasings, determinism."""

import json
import random
import re

import pytest

from ember.data.tool_use import (
    ANSWER_TEMPLATE,
    HELDOUT_PHRASINGS,
    OPS,
    TOOL_SYSTEM_PROMPT,
    TRAIN_PHRASINGS,
    default_eval_set,
    make_conversation,
    make_eval_set,
    make_question,
    safe_eval,
    tool_call_text,
    write_tool_use_jsonl,
)

CALL = re.compile(r'^<tool_call>\{"name": "calculator", "arguments": \{"expression": "(.+)"\}\}</tool_call>$')


def test_conversation_is_well_formed_and_tool_result_is_the_value():
    rng = random.Random(0)
    for _ in range(300):
        msgs = make_conversation(rng)["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant"]
        assert msgs[0]["content"] == TOOL_SYSTEM_PROMPT
        m = CALL.match(msgs[2]["content"])
        assert m, msgs[2]["content"]
        call = json.loads(msgs[2]["content"].removeprefix("<tool_call>").removesuffix("</tool_call>"))
        assert call == {"name": "calculator", "arguments": {"expression": m.group(1)}}
        value = safe_eval(m.group(1))
        assert isinstance(value, int) and msgs[3]["content"] == str(value)
        assert msgs[4]["content"] == ANSWER_TEMPLATE.format(value)


@pytest.mark.parametrize("phrasing_set", ["train", "heldout"])
def test_questions_operands_and_answers(phrasing_set):
    rng = random.Random(1)
    for op in OPS:
        for _ in range(200):
            question, expression, answer = make_question(rng, op, phrasing_set)
            a, sym, b = expression.split(" ")
            assert sym == op and answer == safe_eval(expression)
            assert a in question and b in question and "{" not in question and "!" not in question
            digits = (2, 3) if op == "*" else (2, 4)
            assert all(digits[0] <= len(x) <= digits[1] for x in (a, b))


def test_subtraction_can_be_negative_and_word_problems_are_not():
    rng = random.Random(2)
    results = [make_question(rng, "-", "train") for _ in range(400)]
    assert any(ans < 0 for _, _, ans in results)
    for q, _, ans in results:
        if q.startswith(("I had", "A tank")):
            assert ans >= 0


def test_operand_order_trap_in_heldout():
    rng = random.Random(3)
    for _ in range(300):
        q, expr, ans = make_question(rng, "-", "heldout")
        if q.startswith("Please subtract"):
            b, a = re.findall(r"\d+", q)
            assert expr == f"{a} - {b}" and ans == int(a) - int(b)
            return
    pytest.fail("the 'subtract b from a' phrasing never came up")


def test_phrasings_are_disjoint_and_numerous():
    def words(t):  # the wording without operands or the word-problem mark
        return re.sub(r"\{[ab]\}", "#", t.lstrip("!")).lower()

    train = {words(t) for ts in TRAIN_PHRASINGS.values() for t in ts}
    heldout = {words(t) for ts in HELDOUT_PHRASINGS.values() for t in ts}
    assert len(train) >= 12 and len(heldout) >= 8
    assert not train & heldout
    assert set(TRAIN_PHRASINGS) == set(HELDOUT_PHRASINGS) == set(OPS)


def test_determinism_by_seed(tmp_path):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_tool_use_jsonl(a, 50, seed=7)
    write_tool_use_jsonl(b, 50, seed=7)
    write_tool_use_jsonl(c, 50, seed=8)
    assert a.read_text() == b.read_text() != c.read_text()
    lines = a.read_text().splitlines()
    assert len(lines) == 50 and all(len(json.loads(x)["messages"]) == 5 for x in lines)
    assert make_eval_set(20, seed=5) == make_eval_set(20, seed=5) != make_eval_set(20, seed=6)


def test_eval_set_uses_heldout_phrasings_only():
    items = default_eval_set()
    assert len(items) == 100 and items == default_eval_set()
    patterns = [re.compile("^" + re.escape(t.lstrip("!")).replace(r"\{a\}", r"-?\d+").replace(r"\{b\}", r"-?\d+") + "$")
                for ts in HELDOUT_PHRASINGS.values() for t in ts]
    for it in items:
        assert isinstance(it["answer"], int)
        assert any(p.match(it["question"]) for p in patterns), it["question"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="phrasing_set"):
        make_question(random.Random(0), "+", "test")
    with pytest.raises(ValueError, match="operator"):
        make_question(random.Random(0), "/")
    with pytest.raises(ValueError, match="positive"):
        write_tool_use_jsonl("unused.jsonl", 0)


def test_rendered_tool_call_is_in_the_assistant_mask(smollm2_tokenizer):
    tok = smollm2_tokenizer
    msgs = make_conversation(random.Random(4))["messages"]
    ids, mask = tok.render_chat(msgs, add_generation_prompt=False)
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    expression = CALL.match(msgs[2]["content"]).group(1)
    assert learned == f"{tool_call_text(expression)}<|im_end|>{msgs[4]['content']}<|im_end|>"
    # The system prompt, question and tool result are context only.
    assert msgs[3]["content"] not in learned.replace(msgs[4]["content"], "")
    assert len(ids) < 160  # short conversations: SFT runs on a CPU
