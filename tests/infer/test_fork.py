"""N samples of one prompt share one prefill (ember/infer/fork.py): the prompt runs through
the model once, and each forked sample is bit for bit (tokens and log-probs) the sample an
independent request with seed `seed + i` gets."""

import pytest
import torch
from infer_helpers import make_model, make_tokenizer

from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams


def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in (23, 7)]


def count_prefills(engine: Engine) -> list[int]:
    """Wrap the engine's prefill forward; returns the list of prefilled lengths."""
    seen, inner = [], engine._prefill_row

    def spy(prompt, row, every_position=False, start=0):
        seen.append(len(prompt) - start)
        return inner(prompt, row, every_position, start)

    engine._prefill_row = spy
    return seen


PARAMS = [
    SamplingParams(seed=11, max_tokens=12, logprobs=2, ignore_eos=True),
    SamplingParams(seed=3, temperature=1.3, top_k=30, repetition_penalty=1.2, max_tokens=9, ignore_eos=True),
    SamplingParams(seed=0, top_p=0.9, max_tokens=8, logprobs=1, prompt_logprobs=True, ignore_eos=True),
]


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("slots", [3, 8])  # 3: later samples wait for a slot, then copy the kept prefill
def test_forked_samples_are_the_independent_samples_with_seeds_seed_plus_i(params, slots, monkeypatch):
    model, tok = make_model(), make_tokenizer()
    ps, n = prompts(), 5
    engine = Engine(model, tok, max_batch_size=slots)
    prefilled = count_prefills(engine)
    forked = engine.generate(ps, params, n=n)
    assert prefilled == [len(p) for p in ps]  # one prefill per prompt, not per sample
    assert len(forked) == len(ps) * n
    assert len({tuple(r.token_ids) for r in forked[:n]}) > 1  # the samples differ
    # The same requests in the same slots, each prefilling its own prompt: bit for bit.
    monkeypatch.setattr("ember.infer.engine.joins", lambda *a: False)
    seeded = [SamplingParams(**{**params.__dict__, "seed": params.seed + i}) for i in range(n)]
    plain = Engine(model, tok, max_batch_size=slots)
    prefilled = count_prefills(plain)
    independent = plain.generate([p for p in ps for _ in range(n)], seeded * len(ps))
    assert len(prefilled) == n * len(ps)
    for got, want in zip(forked, independent):
        assert got.token_ids == want.token_ids
        assert got.logprobs == want.logprobs and got.prompt_logprobs == want.prompt_logprobs
    for i in range(n):  # and the tokens of a lone run with seed + i
        alone = Engine(model, tok, max_batch_size=slots).generate([ps[0]], seeded[i])[0]
        assert forked[i].token_ids == alone.token_ids


def test_greedy_n_gives_n_copies_and_one_prefill():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=2)
    prefilled = count_prefills(engine)
    out = engine.generate(prompts()[:1], SamplingParams(temperature=0, max_tokens=6), n=4)
    assert prefilled == [23]
    assert len({tuple(r.token_ids) for r in out}) == 1 and len(out) == 4


def test_requests_queued_with_the_same_prompt_share_the_prefill():
    # the server's n choices arrive as consecutive add_request calls
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=4)
    prefilled = count_prefills(engine)
    p = prompts()[0]
    reqs = [engine.add_request(p, SamplingParams(seed=s, max_tokens=5)) for s in (1, 2)]
    other = engine.add_request(prompts()[1], SamplingParams(seed=1, max_tokens=5))
    while engine.has_unfinished():
        engine.step()
    assert prefilled == [23, 7]
    assert reqs[0].fork is reqs[1].fork and other.fork is None
    alone = Engine(model, tok).generate([p], SamplingParams(seed=2, max_tokens=5))[0]
    assert reqs[1].result().token_ids == alone.token_ids


def test_aborting_a_waiting_sample_drops_the_kept_prefill():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=1)
    p = prompts()[1]
    a, b = (engine.add_request(p, SamplingParams(seed=s, max_tokens=3)) for s in (1, 2))
    engine.step()  # a is prefilled; b waits for a's slot, its prefill kept for it
    assert a.fork.kv is not None
    engine.abort(b)
    assert a.fork.kv is None and a.fork.logits is None
    while engine.has_unfinished():
        engine.step()
    assert a.finished and b.finish_reason == "abort"


@pytest.mark.parametrize("n", [0, -2, 1.5, True])
def test_bad_n_is_refused_by_name(n):
    engine = Engine(make_model(), make_tokenizer())
    with pytest.raises(ValueError, match=f"n must be >= 1 sample per prompt, got {n!r}"):
        engine.generate(prompts(), SamplingParams(max_tokens=2), n=n)


def test_n_with_a_constraint_is_refused():
    engine = Engine(make_model(), make_tokenizer())
    with pytest.raises(ValueError, match="n=2 samples with a constraint"):
        engine.generate(prompts()[:1], SamplingParams(max_tokens=2), constraints=[object()], n=2)


def test_seed_overflow_is_refused():
    engine = Engine(make_model(), make_tokenizer())
    with pytest.raises(ValueError, match="exceeds the largest seed"):
        engine.generate(prompts()[:1], SamplingParams(seed=2**63 - 2, max_tokens=2), n=3)
