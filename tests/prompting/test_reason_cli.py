"""`ember reason` and `ember reason curve`: bad input is a one-line error; curves from saved runs."""

import json
import sys
import types
from pathlib import Path

import pytest

from ember.cli import main
from ember.cli.reason import check_budget, load_problems, load_reason_verifier
from ember.prompting.curves import bon_at_k, run_curve
from ember.prompting.estimators import maj_at_k, wilson
from ember.prompting.prompts import Problem

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infer"))
from infer_helpers import make_tokenizer  # noqa: E402


def _err(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_arguments_fail_before_loading_a_model(capsys, tmp_path):
    assert "--n must be an integer >= 1, got 0" in _err(capsys, ["reason", "--n", "0"])
    assert "unknown task 'nope'" in _err(capsys, ["reason", "--task", "nope"])
    assert "needs --verifier" in _err(capsys, ["reason", "--strategy", "wbon", "--limit", "1"])
    assert "no such file" in _err(capsys, ["reason", "--task", str(tmp_path / "x.jsonl")]).lower()
    assert "perplexity task" in _err(capsys, ["reason", "--task", "heldout"])
    assert "at least one result file" in _err(capsys, ["reason", "curve"])


def test_tasks_become_problems_and_extractors():
    probs, pool, extract, name, _ = load_problems("arithmetic")
    assert probs[0] == Problem("What is 15 - 1?", "14") and len(pool) == 20
    assert extract("15 - 1 = 14. The answer is 14.") == "14" and extract("no idea") is None
    assert extract("The answer is 3, wait, 7 + 7 = 14") == "3" and "last-number" in name
    probs, _, extract, name, _ = load_problems("commonsense")
    assert probs[0].choices[0] == "It melts into water" and probs[0].answer == "A"
    assert extract("So the answer is (B).") == "B" and extract("I think C. is right") == "C"
    assert extract("It is impossible") is None and "choice_answer" in name


def test_choice_extraction_reads_past_restated_options():
    _, _, extract, _, _ = load_problems("commonsense")
    restated = "A. It melts into water\nB. It burns\nC. It grows\nD. It sings\n"
    assert extract(restated + "The answer is C.") == "C"  # not the first option's A
    assert extract(restated + "Answer: (B)") == "B" and extract("Answer:\n" + restated + "so it is B") == "B"
    assert extract("A is wrong, B is wrong, the answer is D, not C") == "D"  # the explicit one wins
    assert extract("It melts, so A") == "A" and extract("I think C. is right") == "C"


def test_jsonl_task(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"question": "2+2?", "answer": 4}\n')
    probs, _, extract, _, _ = load_problems(str(f))
    assert probs == [Problem("2+2?", "4")] and extract("= 4") == "4"
    f.write_text('{"q": 1}\n')
    with pytest.raises(ValueError, match="line 1: expected"):
        load_problems(str(f))


def test_budget_below_the_answer_length():
    tok = make_tokenizer()  # bytes: " -59" is 4 tokens
    with pytest.raises(ValueError, match="--max-tokens 2 is below the answer length: the answer '-59' takes 4"):
        check_budget(tok, [Problem("q", "7"), Problem("q", "-59")], 2)
    check_budget(tok, [Problem("q", "-59")], 4)


def test_verifier_with_another_tokenizer(monkeypatch, tmp_path):
    from ember.tokenizer import Tokenizer

    other = Tokenizer(merges=[(32, 84, 256)], pattern="gpt2", eos_tokens=[], special_tokens={})
    fake = types.ModuleType("ember.train.verifiers")
    fake.load_verifier = lambda d, policy_tokenizer=None: types.SimpleNamespace(tok=other, score=lambda q, s: 0.0)
    monkeypatch.setitem(sys.modules, "ember.train.verifiers", fake)
    with pytest.raises(ValueError, match="uses another tokenizer than the model's"):
        load_reason_verifier(str(tmp_path), make_tokenizer())
    with pytest.raises(FileNotFoundError):
        load_reason_verifier(str(tmp_path / "missing"), make_tokenizer())
    assert load_reason_verifier("logprob", make_tokenizer()).uses_logprobs


def _run(strategy, answers, scores=None):
    items = [{"gold": "5", "answers": a, "tokens": 10 * len(a), "scores": s}
             for a, s in zip(answers, scores or [None] * len(answers))]
    return {"strategy": strategy, "accuracy": 0.5, "samples": len(answers[0]), "items": items}


def test_curve_points_carry_intervals():
    """Sampled points: a bootstrap over questions (per-question values 1, 0, 1, 1: a resample
    of three or four 0s has chance 0.051, above 2.5%, so the interval is [0.25, 1]); a
    single-reply run: Wilson on its accuracy."""
    answers = [["5", "5"], ["4", "4"], ["5", "5"], ["5", "5"]]
    p = run_curve(_run("sc", answers))["points"][0]
    assert p["accuracy"] == 0.75 and p["ci"] == [0.25, 1.0]
    one = run_curve({**_run("cot", [["5"], ["4"]]), "accuracy": 0.5})["points"][0]
    assert one["ci"] == pytest.approx(list(wilson(1, 2)))


def test_curves_match_the_estimators(tmp_path, capsys):
    answers = [["5", "4", "4", "5"], ["5", "5", None, "3"]]
    c = run_curve(_run("sc", answers))
    assert [p["k"] for p in c["points"]] == [1, 2, 4]
    assert c["points"][1]["accuracy"] == pytest.approx((maj_at_k(answers[0], "5", 2) + maj_at_k(answers[1], "5", 2)) / 2)
    assert c["points"][0]["tokens"] == 10 and c["points"][2]["pass"] == 1.0
    b = run_curve(_run("bon", answers, [[0.1, 0.9, 0.2, 0.3], [0.5, 0.1, 0.9, 0.2]]))
    assert b["points"][-1]["accuracy"] == 0.0  # the best-scored of all 4 is wrong in both
    assert b["points"][0]["accuracy"] == pytest.approx(0.5)
    assert bon_at_k([True, False], [0.2, 0.1], 2) == 1.0
    f = tmp_path / "sc.json"
    f.write_text(json.dumps(_run("sc", answers)))
    assert main(["reason", "curve", str(f), "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "c.json").read_text())["curves"][0]["strategy"] == "sc"
    assert "exists" in _err(capsys, ["reason", "curve", str(f), "--out", str(tmp_path / "c")])  # never overwritten
    (tmp_path / "bad.json").write_text("{}")
    assert "not an `ember reason --out` result" in _err(capsys, ["reason", "curve", str(tmp_path / "bad.json")])
