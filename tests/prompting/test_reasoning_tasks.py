"""The generated word problems: right answers, checkable steps, the difficulty levels,
determinism, corrupted solutions' labels, and the eval-harness task they are written to."""

import random

import pytest

from ember.data.reasoning_tasks import (
    LEVELS,
    check_step,
    corrupt,
    extract_answer,
    is_correct,
    make_problems,
    parse_step,
    solution_text,
    step_labels,
    write_task,
)


@pytest.mark.parametrize("difficulty", [1, 3, 5])
def test_answers_are_the_chained_steps(difficulty):
    for p in make_problems(50, difficulty, seed=3):
        assert all(check_step(s) for s in p["steps"])
        values = [parse_step(s) for s in p["steps"]]
        assert all(values[i + 1][0] == values[i][3] for i in range(len(values) - 1))  # each uses the last
        assert values[-1][3] == p["answer"] and str(values[0][0]) in p["question"]
        assert step_labels(p, p["steps"]) == [1] * LEVELS[difficulty].steps
        assert is_correct(p, solution_text(p["steps"], p["answer"]))


def test_levels_grow_the_steps_operators_and_numbers():
    assert [len(make_problems(1, d, seed=0)[0]["steps"]) for d in range(1, 6)] == [1, 1, 1, 1, 2]
    ops = {d: {parse_step(s)[1] for p in make_problems(60, d, seed=2) for s in p["steps"]} for d in range(1, 6)}
    assert ops[1] == ops[2] == {"+"} and ops[3] == {"+", "-"} and ops[4] == ops[5] == {"+", "-", "*"}
    biggest = [max(parse_step(p["steps"][0])[0] for p in make_problems(60, d, seed=2)) for d in (1, 2, 4)]
    assert biggest[0] <= 9 < biggest[1] <= 12 < biggest[2] <= 20
    lengths = [sum(len(p["question"]) for p in make_problems(30, d, seed=0)) for d in (4, 5)]
    assert lengths[0] < lengths[1]


def test_easy_levels_state_the_expression():
    for d in range(1, 6):
        for p in make_problems(20, d, seed=4):
            a, op, b, _ = parse_step(p["steps"][0])
            assert (f", so {p['question'].split()[0]} has {a} {op} {b} " in p["question"]) == (d <= 3)


def test_deterministic_by_seed():
    assert make_problems(20, 3, seed=7) == make_problems(20, 3, seed=7)
    assert make_problems(20, 3, seed=7) != make_problems(20, 3, seed=8)


def test_bad_difficulty_is_named():
    with pytest.raises(ValueError, match="difficulty must be in 1..5, got 0"):
        make_problems(1, 0, seed=0)
    with pytest.raises(ValueError, match="got 6"):
        make_problems(1, 6, seed=0)


def test_corrupted_solutions_are_labelled_up_to_the_first_wrong_step():
    rng = random.Random(0)
    positions = set()
    for p in make_problems(60, 5, seed=1):
        steps, labels = corrupt(p, rng)
        k = labels.index(0)
        positions.add(k)
        assert labels == [1] * k + [0] * (2 - k)
        assert step_labels(p, steps) == labels  # the mechanical check agrees with the corruption
        assert not check_step(steps[k]) and all(check_step(s) for s in steps[k + 1:])
        assert parse_step(steps[-1])[3] != p["answer"] or k < 1
        assert not is_correct(p, solution_text(steps)) or parse_step(steps[-1])[3] == p["answer"]
    assert positions == {0, 1}  # the slip lands anywhere


def test_extract_answer_prefers_the_text_after_think():
    assert extract_answer("<think>\n2 + 2 = 4\n</think>\nThe answer is 4.") == 4
    assert extract_answer("<think>\n2 + 2 = 4\n</think>\nSo it is five") == 4
    assert extract_answer("12 then 13") == 13 and extract_answer("") is None


def test_a_stated_answer_wins_over_numbers_after_it():
    assert extract_answer("6 * 3 = 18\nThe answer is 18.\nStep 2: 18 + 1 = 19") == 18
    assert extract_answer("<think>\n2 + 2 = 4\n</think>\nThe answer is: 4, not 5") == 4
    assert extract_answer("the answer is 3. Wait, the answer is 7 then 9") == 7  # the last statement


def test_written_task_loads_in_the_eval_harness(tmp_path):
    from ember.eval.harness.tasks import load_task

    path = write_task(tmp_path, difficulty=2, n=10, seed=0, n_dev=2)
    task = load_task(str(path))
    docs = task.docs("test")
    assert task.output_type == "generate_until" and len(docs) == 10
    assert docs[0]["answer"] == str(make_problems(1, 2, seed=0)[0]["answer"])


class ScriptedThinker:
    """A scripted model: each thought it writes is "x = 1\\n" then `</think>`; after
    `</think>` it answers "The answer is 1."; it records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, ids, max_tokens, stop):
        text = "".join(map(chr, ids))
        self.calls.append((text, max_tokens, stop))
        if text.endswith("</think>\n"):
            out = "The answer is 1."
            return out[:max_tokens], min(len(out), max_tokens), len(out) <= max_tokens
        thought = "x = 1\n"
        if max_tokens < len(thought):
            return thought[:max_tokens], max_tokens, False
        return thought, len(thought), True


def _force(budget, extend=0):
    from ember.prompting.budget import _Chars, budget_force

    model = ScriptedThinker()
    return budget_force(model, [ord("Q")], _Chars(), budget=budget, extend=extend), model


def test_budget_cuts_a_long_thought_and_forces_the_close():
    r, model = _force(budget=4)
    assert r.thinking_tokens == 4 and r.forced_stop and r.waits == 0
    assert r.text == "<think>\nx = \n</think>\nThe answer is 1."
    assert model.calls[-1][0].endswith("x = \n</think>\n")  # the answer is asked after the forced close


def test_a_thought_that_ends_within_budget_is_kept():
    r, model = _force(budget=50)
    assert (r.thinking_tokens, r.forced_stop, r.thought) == (6, False, "x = 1\n") and len(model.calls) == 2
    assert model.calls[0][1:] == (50, ["</think>"])


def test_wait_extends_an_early_close_until_extend_or_the_budget():
    r, _ = _force(budget=50, extend=2)
    assert r.waits == 2 and r.thought == "x = 1\nWait\nx = 1\nWait\nx = 1\n" and r.thinking_tokens == 18
    assert not r.forced_stop
    r, _ = _force(budget=9, extend=5)  # the second thought runs into the budget
    assert r.waits == 1 and r.thinking_tokens == 9 and r.forced_stop
    assert r.thought == "x = 1\nWait\nx =\n"


def test_budget_zero_answers_at_once_and_bad_values_are_named():
    from ember.prompting.budget import _Chars, budget_force

    r, model = _force(budget=0)
    assert r.thought == "" and r.thinking_tokens == 0 and len(model.calls) == 1
    with pytest.raises(ValueError, match="got -1, 0, 24"):
        budget_force(ScriptedThinker(), [1], _Chars(), budget=-1)
