"""Prompt builders: plain and chat, k-shot seeded sampling and order, CoT trigger, choices."""

import pytest

from ember.prompting.prompts import (
    COT_TRIGGER,
    TEMPLATES,
    Problem,
    build_prompt,
    reorder,
    revision_prompt,
    sample_demos,
)

POOL = [Problem(f"What is {i} + 1?", str(i + 1)) for i in range(10)]


def test_zero_shot_plain_and_cot():
    p = Problem("What is 2 + 3?", "5")
    assert build_prompt(p, []) == "Question: What is 2 + 3?\nAnswer:"
    assert build_prompt(p, [], cot=True).endswith("Answer: " + COT_TRIGGER)
    assert build_prompt(p, [], system="Be brief.").startswith("Be brief.\n\nQuestion:")


def test_k_shot_demos_are_seeded_exclude_the_question_and_reorder():
    a = sample_demos(POOL, 3, seed=7, exclude=POOL[0])
    assert a == sample_demos(POOL, 3, seed=7, exclude=POOL[0])
    assert POOL[0] not in a and len(set(a)) == 3
    assert a != sample_demos(POOL, 3, seed=8, exclude=POOL[0])
    b = reorder(a, seed=1)
    assert sorted(b, key=str) == sorted(a, key=str)
    text = build_prompt(POOL[0], a)
    assert text.count("Question:") == 4 and f"Answer: {a[0].answer}\n\n" in text
    with pytest.raises(ValueError, match="11 shots need 11 demonstrations; the pool has 10"):
        sample_demos(POOL, 11, seed=0)
    with pytest.raises(ValueError, match="shots must be >= 0"):
        sample_demos(POOL, -1, seed=0)


def test_chat_messages_put_demos_in_turns():
    msgs = build_prompt(POOL[0], POOL[1:3], system="sys", chat=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == POOL[1].answer
    assert revision_prompt(msgs, "It is 2.", chat=True)[-2] == {"role": "assistant", "content": "It is 2."}


def test_choices_are_lettered_and_templates_differ():
    p = Problem("Which melts?", "A", ("ice", "stone"))
    assert "\nA. ice\nB. stone" in build_prompt(p, [])
    texts = {build_prompt(POOL[0], [], template=t) for t in TEMPLATES.values()}
    assert len(texts) == len(TEMPLATES)
    with pytest.raises(ValueError, match="2..8 choices, got 1"):
        Problem("q", "A", ("only",))
