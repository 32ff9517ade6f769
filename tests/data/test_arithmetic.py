import random

from ember.data.arithmetic import (
    arithmetic_row,
    exact_match_reward,
    format_reward,
    heldout_rows,
    step_rows,
)


def test_rewards():
    row = {"answer": -12}
    assert exact_match_reward(row, "so 3 - 15 = -12") == 1.0
    assert exact_match_reward(row, "-12 or 7") == 0.0
    assert exact_match_reward(row, "no idea") == 0.0
    assert exact_match_reward({"answer": 1234}, "It is 1,234.") == 1.0
    assert format_reward(row, "-12") == 0.2 and format_reward(row, "-12 apples") == 0.0


def test_prompts_are_seeded_and_heldout_is_disjoint():
    held = {r["expression"] for r in heldout_rows(50, ["+", "-"], 2, seed=0)}
    assert len(held) == 50
    rows = [r for s in range(100) for r in step_rows(4, ["+", "-"], 2, 0, s, held)]
    assert not held & {r["expression"] for r in rows}
    assert step_rows(4, ["+"], 2, 0, 7, held) == step_rows(4, ["+"], 2, 0, 7, held)
    assert step_rows(4, ["+"], 2, 0, 7, held) != step_rows(4, ["+"], 2, 1, 7, held)


def test_the_answer_is_the_expression_and_operands_have_the_digits():
    row = arithmetic_row(random.Random(1), ["-"])
    assert exact_match_reward(row, str(row["answer"])) == 1.0
    a, op, b = row["expression"].split()
    assert op == "-" and len(a) == len(b) == 2 and row["answer"] == int(a) - int(b)
