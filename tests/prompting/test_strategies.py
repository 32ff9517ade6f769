"""Strategies over a scripted generator (and the tiny engine): what each one picks."""

import sys
from pathlib import Path

import pytest

from ember.prompting.beam import prm_beam
from ember.prompting.generate import EngineGenerator, Sample
from ember.prompting.prompts import Problem
from ember.prompting.run import evaluate_strategy, sensitivity
from ember.prompting.strategies import LogprobVerifier, StrategyConfig, run_strategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infer"))
from infer_helpers import make_model, make_tokenizer  # noqa: E402


def extract(text):
    import re

    m = re.findall(r"-?\d+", text)
    return m[-1] if m else None


class Scripted:
    """Sample i of every prompt replies replies[i % len]; greedy replies replies[0]. Records calls."""

    def __init__(self, replies, logprobs=None):
        self.replies, self.logprobs, self.calls = replies, logprobs, []

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=256, stop=(), seed=0, logprobs=False):
        self.calls.append((list(prompts), n, temperature, stop))
        out = []
        for _ in prompts:
            out.append([Sample(self.replies[i % len(self.replies)], 3,
                               self.logprobs[i % len(self.logprobs)] if self.logprobs else None)
                        for i in range(n)])
        return out


class StandIn:
    """An ORM that likes replies containing `good`; a PRM that scores each step likewise."""

    def __init__(self, good):
        self.good = good

    def score(self, question, solution_text):
        return 1.0 if self.good in solution_text else 0.1

    def score_steps(self, question, steps):
        return [1.0 if self.good in s else 0.1 for s in steps]


REPLIES = ["so 4", "so 5", "so 5", "nothing"]


def test_sc_takes_the_majority_and_counts_tokens():
    [o] = run_strategy("sc", Scripted(REPLIES), ["p"], ["q"], extract, StrategyConfig(n=4))
    assert o.answer == "5" and o.answers == ["4", "5", "5", None] and o.tokens == 12


def test_bon_and_wbon_follow_the_verifier():
    gen = Scripted(["so 4", "so 5", "so 5", "so 4 again 4"])
    v = StandIn("again")
    [b] = run_strategy("bon", gen, ["p"], ["q"], extract, StrategyConfig(n=4), v)
    assert b.answer == "4" and b.scores == [0.1, 0.1, 0.1, 1.0]
    [w] = run_strategy("wbon", gen, ["p"], ["q"], extract, StrategyConfig(n=4), v)
    assert w.answer == "4"  # 1.1 for "4" against 0.2 for "5"
    [lp] = run_strategy("bon", Scripted(REPLIES, logprobs=[-3.0, -0.5, -2.0, -1.0]), ["p"], ["q"], extract,
                        StrategyConfig(n=4), LogprobVerifier())
    assert lp.answer == "5"
    with pytest.raises(ValueError, match="strategy bon needs a verifier"):
        run_strategy("bon", gen, ["p"], ["q"], extract, StrategyConfig(n=4))


def test_greedy_cot_and_revise():
    gen = Scripted(["it is 7"])
    [g] = run_strategy("greedy", gen, ["p"], ["q"], extract, StrategyConfig())
    assert g.answer == "7" and gen.calls[-1][1:3] == (1, 0.0)
    [r] = run_strategy("revise", gen, ["Q"], ["q"], extract, StrategyConfig(n=3))
    assert len(r.texts) == 3 and r.tokens == 9
    assert gen.calls[-1][0][0].startswith("Q it is 7") and "Check the answer" in gen.calls[-1][0][0]


def test_bad_strategy_and_n():
    with pytest.raises(ValueError, match="unknown strategy 'magic'"):
        run_strategy("magic", Scripted(REPLIES), ["p"], ["q"], extract, StrategyConfig())
    with pytest.raises(ValueError, match="n must be >= 1 sample, got 0"):
        run_strategy("sc", Scripted(REPLIES), ["p"], ["q"], extract, StrategyConfig(n=0))


class Steps:
    """Step replies: after k steps, sample i says f"step{k}-{i}"; the third step ends (EOS)."""

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=256, stop=(), seed=0, logprobs=False):
        out = []
        for _, prefix in prompts:
            k = prefix.count("\n")
            out.append([Sample(f"step{k}-{i}" + (" answer 9" if k == 2 and i == 1 else ""), 2, None, "stop", k == 2)
                        for i in range(n)])
        return out


def test_prm_beam_keeps_the_best_steps():
    [o] = prm_beam(Steps(), ["p"], ["q"], extract, StrategyConfig(n=4, beam=2, max_steps=5), StandIn("-1"))
    assert o.texts[0] == "step0-1\nstep1-1\nstep2-1 answer 9" and o.answer == "9"
    assert o.tokens == 2 * (2 + 4 + 4)  # 2 candidates at depth 0, 2 per kept beam after


def test_evaluate_strategy_summary_and_unparseable_error():
    probs = [Problem("q1", "5"), Problem("q2", "4")]
    r = evaluate_strategy(Scripted(REPLIES), probs, probs, extract, "sc", StrategyConfig(n=4), progress=False)
    assert r["accuracy"] == 0.5 and r["n"] == 2 and r["samples"] == 4 and r["unparseable"] == 2
    assert r["pass_at_n"] == 1.0 and 0 < r["ci"][0] < 0.5 < r["ci"][1] < 1
    with pytest.raises(ValueError, match=r"none of the 8 replies .*\(last number\)"):
        evaluate_strategy(Scripted(["no"]), probs, probs, extract, "sc", StrategyConfig(n=4), progress=False,
                          extraction="last number")
    s = sensitivity(Scripted(["5"]), probs, probs, extract, StrategyConfig(), shots=1)
    assert s["min"] == s["max"] == 0.5 and s["std"] == 0.0 and len(s["variants"]) == 3


def test_engine_generator_samples_differ_and_are_reproducible():
    tok = make_tokenizer()
    from ember.infer.engine import Engine

    gen = EngineGenerator(Engine(make_model(0, max_seq_len=64), tok, max_batch_size=4))
    a = gen.generate(["Q: 1+1?", "Q: 2+2?"], n=2, temperature=1.0, max_tokens=4, seed=5)
    assert [len(x) for x in a] == [2, 2] and all(s.tokens <= 4 for x in a for s in x)
    assert a[0][0].text != a[0][1].text
    assert [[s.text for s in x] for x in a] == [[s.text for s in x] for x in gen.generate(
        ["Q: 1+1?", "Q: 2+2?"], n=2, temperature=1.0, max_tokens=4, seed=5)]
    if gen.shared_prefill:  # n samples sharing one prefill are the independent requests' samples
        gen.shared_prefill = False
        assert [[s.text for s in x] for x in a] == [[s.text for s in x] for x in gen.generate(
            ["Q: 1+1?", "Q: 2+2?"], n=2, temperature=1.0, max_tokens=4, seed=5)]
    [[g]] = gen.generate([("Q: 1+1?", "step one\n")], max_tokens=3, logprobs=True)
    assert g.logprob is not None and g.logprob <= 0


def test_prm_beam_never_prefers_an_empty_solution_to_a_scored_one():
    class Neg:
        def score_steps(self, question, steps):
            return [-1.0] * len(steps)

    gen = Scripted(["", "so 3"])
    [o] = prm_beam(gen, ["p"], ["q"], extract, StrategyConfig(n=2, beam=1, max_steps=1), Neg())
    assert o.answer == "3" and o.texts == ["so 3"] and o.scores == [-1.0]
