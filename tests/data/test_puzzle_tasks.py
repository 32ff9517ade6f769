"""The generated list puzzles: right answers, checkable steps, the difficulty levels,
determinism, corrupted solutions' labels, answer extraction, and the family registry."""

import random
import re

import pytest

from ember.data.puzzle_tasks import (
    LEVELS,
    apply_op,
    check_step,
    corrupt,
    extract_answer,
    is_correct,
    make_problems,
    parse_step,
    prompt_text,
    solution_text,
    step_labels,
)


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_answers_are_the_chained_steps(difficulty):
    for p in make_problems(60, difficulty, seed=3):
        steps = [parse_step(s) for s in p["steps"]]
        assert all(check_step(s) for s in p["steps"]) and len(steps) == LEVELS[difficulty].steps
        assert all(steps[i + 1][1] == steps[i][2] for i in range(len(steps) - 1))  # each uses the last
        assert ", ".join(steps[-1][2]) == p["answer"]
        assert p["question"].startswith(f"Start with the list: {', '.join(steps[0][1])}.")
        assert step_labels(p, p["steps"]) == [1] * len(steps)
        assert is_correct(p, solution_text(p["steps"])) and is_correct(p, solution_text(p["steps"], p["answer"]))


def test_the_answer_follows_from_the_question_alone():
    """Re-derive every answer from the question's sentences, not from the stored steps."""
    sentence_ops = {"Add (\\w+) at the end": "append {0}", "Remove (\\w+)": "remove {0}", "Reverse the list": "reverse",
                    "Swap the first and the last item": "swap", "Move the first item to the end": "rotate",
                    "Replace (\\w+) with (\\w+)": "replace {0} with {1}"}


    for d in range(1, 6):
        for p in make_problems(40, d, seed=11):
            first, *rest = p["question"].removesuffix(" What is the list now?").split(". ")
            row = first.removeprefix("Start with the list: ").split(", ")
            for sentence in rest:
                sentence = sentence.removeprefix("Then ").rstrip(".")
                sentence = sentence[0].upper() + sentence[1:]
                op = next(t.format(*m.groups()) for pat, t in sentence_ops.items()
                          if (m := re.fullmatch(pat, sentence)))
                row = apply_op(op, row)
            assert ", ".join(row) == p["answer"]


def test_operations():
    row = ["cat", "dog", "owl", "fox"]
    assert apply_op("reverse", row) == ["fox", "owl", "dog", "cat"]
    assert apply_op("rotate", row) == ["dog", "owl", "fox", "cat"]
    assert apply_op("swap", row) == ["fox", "dog", "owl", "cat"]
    assert apply_op("append pig", row) == ["cat", "dog", "owl", "fox", "pig"]
    assert apply_op("remove owl", row) == ["cat", "dog", "fox"]
    assert apply_op("replace cat with bee", row) == ["bee", "dog", "owl", "fox"]
    assert apply_op("remove pig", row) is None and apply_op("replace pig with cat", row) is None
    assert row == ["cat", "dog", "owl", "fox"]  # never changed in place


def test_levels_grow():
    steps = [len(make_problems(1, d, seed=0)[0]["steps"]) for d in range(1, 6)]
    assert steps == [LEVELS[d].steps for d in range(1, 6)] and steps == sorted(steps)
    for d in range(1, 6):
        ops = {parse_step(s)[0].split()[0] for p in make_problems(80, d, seed=2) for s in p["steps"]}
        assert ops == set(LEVELS[d].ops)
        lengths = {len(parse_step(p["steps"][0])[1]) for p in make_problems(80, d, seed=2)}
        assert lengths == set(range(LEVELS[d].length[0], LEVELS[d].length[1] + 1))


def test_deterministic_by_seed():
    assert make_problems(20, 3, seed=7) == make_problems(20, 3, seed=7)
    assert make_problems(20, 3, seed=7) != make_problems(20, 3, seed=8)
    assert make_problems(0, 3, seed=7) == []


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="difficulty must be in 1..5, got 0"):
        make_problems(1, 0, seed=0)
    with pytest.raises(ValueError, match="got 6"):
        make_problems(1, 6, seed=0)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        make_problems(-1, 1, seed=0)


def test_wrong_steps_are_labelled_from_the_first_wrong_one():
    p = {"steps": ["reverse: cat, dog, owl -> owl, dog, cat", "append pig: owl, dog, cat -> owl, dog, cat, pig"],
         "answer": "owl, dog, cat, pig"}
    assert step_labels(p, p["steps"]) == [1, 1]
    wrong = ["reverse: cat, dog, owl -> owl, cat, dog", "append pig: owl, cat, dog -> owl, cat, dog, pig"]
    assert step_labels(p, wrong) == [0, 0]  # a wrong result, then a right step from it
    other = ["rotate: cat, dog, owl -> dog, owl, cat", "append pig: owl, dog, cat -> owl, dog, cat, pig"]
    assert step_labels(p, other) == [0, 0]  # holds, but not the reference's list
    assert step_labels(p, [p["steps"][0], "the end"]) == [1, 0]
    assert step_labels(p, p["steps"] + ["append fox: owl, dog, cat, pig -> owl, dog, cat, pig, fox"]) == [1, 1, 0]


def test_corrupted_solutions_are_labelled_up_to_the_first_wrong_step():
    rng = random.Random(0)
    positions = set()
    for p in make_problems(60, 5, seed=1):
        steps, labels = corrupt(p, rng)
        k = labels.index(0)
        positions.add(k)
        assert labels == [1] * k + [0] * (len(steps) - k)
        assert step_labels(p, steps) == labels  # the mechanical check agrees with the corruption
        assert not check_step(steps[k]) and steps[:k] == p["steps"][:k]
        assert not is_correct(p, solution_text(steps))
    assert positions == set(range(LEVELS[5].steps))  # the slip lands anywhere


def test_extract_answer():
    assert extract_answer("<think>\nreverse: cat, dog -> dog, cat\n</think>\nThe answer is dog, cat.") == "dog, cat"
    assert extract_answer("The answer is: [Cat, Owl, Fox].") == "cat, owl, fox"
    assert extract_answer("The answer is cat owl fox") == "cat, owl, fox"
    assert extract_answer("The answer is cat, owl. Then pig, hen") == "cat, owl"  # a stated answer wins
    assert extract_answer("<think>\ncat, dog\n</think>\nNow the list is bee, owl.") == "bee, owl"
    assert extract_answer("The list is cat, dog and owl") == "cat, dog, owl"
    assert extract_answer("cat, dog. Then a catalog of dogs") == "cat, dog"  # whole known words only
    assert extract_answer("no items here") is None and extract_answer("") is None
    assert extract_answer("The answer is the first one. So: owl, cat") == "owl, cat"


def test_prompt_asks_for_steps():
    p = make_problems(1, 3, seed=0)[0]
    assert prompt_text(p).startswith(p["question"]) and "step by step" in prompt_text(p)


def test_family_registry_builds_data_for_both_families():
    from ember.data.reasoning import (
        family_module,
        mixed_problems,
        problem_rows,
        trace_conversations,
        verifier_rows,
    )

    assert [p["difficulty"] for p in mixed_problems(6, 0, family="puzzle")] == [1, 2, 3, 4, 5, 1]
    chat = trace_conversations(3, 0, family="puzzle")[2]
    assert "list" in chat[0]["content"] and chat[1]["content"].startswith("<think>\n")
    rows = verifier_rows(20, 0, family="puzzle")
    assert {r["correct"] for r in rows} == {0, 1}
    assert all(r["correct"] == int(all(r["labels"])) and len(r["labels"]) == len(r["steps"]) for r in rows)
    assert all(check_step(s) for r in rows if r["correct"] for s in r["steps"])
    assert problem_rows(2, 4, 0, "heldout", family="puzzle")[0]["answer"].replace(", ", "").isalpha()
    with pytest.raises(ValueError, match="family must be one of arithmetic, puzzle, got 'sudoku'"):
        family_module("sudoku")


def test_sft_builds_puzzle_traces(tmp_path):
    from ember.train.config import TrainConfig
    from ember.train.sft import SFTConfig, load_conversations

    chats = load_conversations(SFTConfig(dataset="reasoning-puzzle", train=TrainConfig(out=str(tmp_path))))
    assert (tmp_path / "reasoning-puzzle_train.jsonl").is_file() and len(chats) == 2000
    question, reply = chats[0][0]["content"], chats[0][1]["content"]
    assert question.startswith("Start with the list: ") and reply.startswith("<think>\n")
    assert extract_answer(reply) == reply.rsplit("The answer is ", 1)[1].rstrip(".")
