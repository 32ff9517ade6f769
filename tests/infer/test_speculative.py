"""Speculative decoding by prompt lookup (ember/infer/speculative.py): greedy output is
token-identical to plain greedy decoding, drafts that the model agrees with are accepted
several tokens per forward, and it stays off where it does not apply."""

import pytest
import torch
from infer_helpers import ScriptedModel, make_model, make_tokenizer

from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams
from ember.infer.speculative import ngram_draft


def test_the_draft_is_what_followed_the_latest_match_of_the_longest_tail():
    assert ngram_draft([1, 2, 3, 9, 2, 3, 7, 2, 3], k=4) == [7, 2, 3]  # most recent "2 3"
    assert ngram_draft([1, 2, 3, 4, 5, 1, 2, 3], k=2) == [4, 5]
    assert ngram_draft([4, 1, 2, 5, 1, 2, 6, 2], k=3) == [6, 2]  # no 3-gram, 2-gram: 1 token
    assert ngram_draft([1, 2, 3], k=4) == []


def run(engine, prompt, sp):
    return engine.generate([prompt], sp)[0]


def test_a_model_that_copies_its_prompt_gets_several_tokens_per_forward():
    tok = make_tokenizer()
    text = list(b"the quick brown fox jumps over the lazy dog; the quick brown fox jumps over")
    prompt = text[:40]
    model = ScriptedModel(text[40:] + [ord("!")] * 3, start=len(prompt))  # continues the copied text
    sp = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    plain = run(Engine(model, tok, max_batch_size=1), prompt, sp)
    engine = Engine(model, tok, max_batch_size=1, speculative="ngram")
    forwards = []
    inner = model.forward
    model.forward = lambda *a, **k: forwards.append(1) or inner(*a, **k)
    spec = run(engine, prompt, sp)
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    assert spec.finish_reason == plain.finish_reason == "length"
    assert len(forwards) < 30 // 2  # 1 prefill + far fewer verify steps than 29 decode steps
    stop = SamplingParams(temperature=0, max_tokens=30, stop=["fox"])  # met inside an accepted draft
    plain, spec = run(Engine(model, tok), prompt, stop), run(Engine(model, tok, speculative="ngram"), prompt, stop)
    assert spec.token_ids == plain.token_ids and spec.text == plain.text == "dog; the quick brown "


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_greedy_output_is_plain_greedy_output(dtype):
    model, tok = make_model(dtype=dtype), make_tokenizer()
    g = torch.Generator().manual_seed(1)
    base = torch.randint(0, 256, (12,), generator=g).tolist()
    prompt = base * 4  # repetitive: the drafts are long
    for sp in [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
               SamplingParams(temperature=0, max_tokens=23, ignore_eos=True)]:  # cut inside a draft
        plain = run(Engine(model, tok, max_batch_size=2), prompt, sp)
        engine = Engine(model, tok, max_batch_size=2, speculative="ngram", speculative_k=5)
        req = engine.add_request(prompt, sp)
        while engine.has_unfinished():
            engine.step()
        assert req.result().token_ids == plain.token_ids and req.result().text == plain.text
        assert req.spec_drafted > 0


def test_it_stays_off_for_two_requests_and_for_penalties_but_not_for_sampling():
    model, tok = make_model(), make_tokenizer()
    prompt = list(range(10)) * 3
    engine = Engine(model, tok, max_batch_size=2, speculative="ngram")
    sampled = engine.add_request(list(range(1, 240)), SamplingParams(seed=1, max_tokens=8))  # most tokens draft
    while engine.has_unfinished():
        engine.step()
    penalised = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=8, repetition_penalty=1.2))
    while engine.has_unfinished():
        engine.step()
    a, b = (engine.add_request(prompt + [i], SamplingParams(temperature=0, max_tokens=8)) for i in (1, 2))
    while engine.has_unfinished():
        engine.step()
    assert sampled.spec_drafted > 0
    assert penalised.spec_drafted == 0 and a.spec_drafted == 0 and b.spec_drafted == 0


@pytest.mark.parametrize("kw, msg", [
    ({"speculative": "model"}, "speculative must be one of off, ngram, auto or a ModelDrafter, got 'model'"),
    ({"speculative_k": 0}, "speculative_k must be >= 1 draft token, got 0")])
def test_bad_options_are_refused_by_name(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Engine(make_model(), make_tokenizer(), **kw)


def test_the_acceptance_rule_preserves_the_target_distribution():
    from ember.infer.speculative import accept_or_resample

    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)  # target
    for q in (torch.tensor([0.1, 0.6, 0.1, 0.2], dtype=torch.float64),  # a draft model's
              torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)):  # a deterministic (n-gram) draft
        n, counts, accepted = 8000, torch.zeros(4), 0
        for _ in range(n):
            x = int(torch.multinomial(q, 1, generator=g))
            ok, t = accept_or_resample(p, q, x, g)
            counts[t] += 1
            accepted += ok
        freq = counts / n
        assert torch.allclose(freq, p.float(), atol=0.022), freq  # 4 sigma at n = 8000 is ~0.022
        assert accepted / n == pytest.approx(float(torch.minimum(p, q).sum()), abs=0.022)  # sum min(p, q)


def test_auto_drafts_by_prompt_lookup_except_on_the_native_decode_step():
    from ember.kernels.decode import NativeTransformer
    from ember.model.config import ModelConfig

    tok = make_tokenizer()
    assert Engine(make_model(), tok, speculative="auto").speculative == "ngram"
    native = NativeTransformer(ModelConfig.tiny(vocab_size=260)).eval()
    assert Engine(native, tok, speculative="auto").speculative == "off"
    assert Engine(native, tok, speculative="ngram").speculative == "ngram"  # asked for by name: kept
