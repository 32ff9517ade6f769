"""The generated word problems: right answers, checkable steps, difficulty = steps,
determinism, corrupted solutions' labels, and the eval-harness task they are written to."""

import random

import pytest

from ember.prompting.tasks_gen import (
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
        assert step_labels(p, p["steps"]) == [1] * difficulty
        assert is_correct(p, solution_text(p["steps"], p["answer"]))


def test_difficulty_is_the_number_of_steps_and_grows_the_text():
    lengths = [sum(len(p["question"]) for p in make_problems(30, d, seed=0)) for d in range(1, 6)]
    assert [len(make_problems(1, d, seed=0)[0]["steps"]) for d in range(1, 6)] == [1, 2, 3, 4, 5]
    assert lengths == sorted(lengths) and len(set(lengths)) == 5


def test_deterministic_by_seed():
    assert make_problems(20, 3, seed=7) == make_problems(20, 3, seed=7)
    assert make_problems(20, 3, seed=7) != make_problems(20, 3, seed=8)


def test_bad_difficulty_is_named():
    with pytest.raises(ValueError, match="difficulty must be in 1..8, got 0"):
        make_problems(1, 0, seed=0)


def test_corrupted_solutions_are_labelled_up_to_the_first_wrong_step():
    rng = random.Random(0)
    positions = set()
    for p in make_problems(60, 4, seed=1):
        steps, labels = corrupt(p, rng)
        k = labels.index(0)
        positions.add(k)
        assert labels == [1] * k + [0] * (4 - k)
        assert step_labels(p, steps) == labels  # the mechanical check agrees with the corruption
        assert not check_step(steps[k]) and all(check_step(s) for s in steps[k + 1:])
        assert parse_step(steps[-1])[3] != p["answer"] or k < 3
        assert not is_correct(p, solution_text(steps)) or parse_step(steps[-1])[3] == p["answer"]
    assert positions == {0, 1, 2, 3}  # the slip lands anywhere


def test_extract_answer_prefers_the_text_after_think():
    assert extract_answer("<think>\n2 + 2 = 4\n</think>\nThe answer is 4.") == 4
    assert extract_answer("<think>\n2 + 2 = 4\n</think>\nSo it is five") == 4
    assert extract_answer("12 then 13") == 13 and extract_answer("") is None


def test_written_task_loads_in_the_eval_harness(tmp_path):
    from ember.eval.harness.tasks import load_task

    path = write_task(tmp_path, difficulty=2, n=10, seed=0, n_dev=2)
    task = load_task(str(path))
    docs = task.docs("test")
    assert task.output_type == "generate_until" and len(docs) == 10
    assert docs[0]["answer"] == str(make_problems(1, 2, seed=0)[0]["answer"])
