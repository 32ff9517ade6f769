"""Speculative decoding with a draft model and with early exit (ember/infer/draft.py): greedy
output is plain greedy output whatever the drafter, a drafter equal to the model has every
draft accepted (its KV cache is kept in step, rolled back and caught up correctly), a poor
drafter switches itself off, and a draft model with another tokenizer is refused."""

import copy

import pytest
import torch
from infer_helpers import make_model, make_tokenizer

from ember.infer.draft import ModelDrafter, early_exit
from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams
from ember.model.config import ModelConfig
from ember.model.transformer import Transformer
from ember.tokenizer.tokenizer import Tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


def prompt(seed=1, n=24):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run_alone(engine, ids, sp=GREEDY):
    req = engine.add_request(ids, sp)
    while engine.has_unfinished():
        engine.step()
    return req


@pytest.mark.parametrize("make_drafter", [
    lambda m: ModelDrafter(make_model(seed=5, dtype=torch.float64), k=3),  # another random model
    lambda m: ModelDrafter(early_exit(m, 1), k=4),  # the model's first block
], ids=["draft-model", "early-exit"])
def test_greedy_output_is_plain_greedy_output(make_drafter):
    model, tok = make_model(dtype=torch.float64, n_layers=3), make_tokenizer()
    plain = run_alone(Engine(model, tok, max_batch_size=1), prompt())
    engine = Engine(model, tok, max_batch_size=1, speculative=make_drafter(model))
    spec = run_alone(engine, prompt())
    assert spec.token_ids == plain.token_ids and spec.spec_drafted > 0


def test_a_drafter_equal_to_the_model_has_every_draft_accepted_across_requests():
    model, tok = make_model(dtype=torch.float64), make_tokenizer()
    drafter = ModelDrafter(copy.deepcopy(model), k=3)
    engine = Engine(model, tok, max_batch_size=2, speculative=drafter)
    for seed in (1, 2):  # a second request: the draft cache starts over
        req = run_alone(engine, prompt(seed))
        assert req.spec_drafted > 0 and req.spec_accepted == req.spec_drafted
    # Two at once: no drafts while both run; the longer one then runs alone and drafts,
    # its draft cache catching up on the tokens decoded without it.
    short = engine.add_request(prompt(3), SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    long = engine.add_request(prompt(4), GREEDY)
    while engine.has_unfinished():
        engine.step()
    plain = run_alone(Engine(model, tok, max_batch_size=1), prompt(4))
    assert short.spec_drafted == 0 and long.token_ids == plain.token_ids
    assert 0 < long.spec_drafted == long.spec_accepted


def test_a_poor_drafter_stops_drafting():
    model, tok = make_model(), make_tokenizer()
    drafter = ModelDrafter(make_model(seed=7), k=4)
    engine = Engine(model, tok, max_batch_size=1, speculative=drafter)
    assert drafter.min_acceptance == pytest.approx(0.9)  # as large as the model: it must almost always be right
    req = run_alone(engine, prompt(), SamplingParams(temperature=0, max_tokens=120, ignore_eos=True))
    assert req.spec_accepted < 0.9 * req.spec_drafted
    assert 32 <= req.spec_drafted <= 40  # stopped after the probation


def test_early_exit_shares_the_weights_and_checks_its_depth():
    model = make_model(n_layers=3)
    short = early_exit(model, 2)
    assert len(short.layers) == 2 and len(model.layers) == 3 and model.config.n_layers == 3
    assert short.layers[0] is model.layers[0] and short.output is model.output
    with pytest.raises(ValueError, match=r"draft layers must be in 1..2 \(the model has 3 blocks\), got 3"):
        early_exit(model, 3)


def test_a_draft_model_with_another_vocabulary_or_tokenizer_is_refused():
    model, tok = make_model(), make_tokenizer()
    other = Transformer(ModelConfig.tiny(vocab_size=512))
    with pytest.raises(ValueError, match="the draft model tiny-512 has vocab_size 512, the model 260"):
        Engine(model, tok, speculative=ModelDrafter(other, name="tiny-512"))
    swapped = Tokenizer(merges=[(32, 0x41, 259)], pattern="gpt2", special_tokens=dict(tok.special_tokens),
                        eos_tokens=tok.eos_tokens)
    with pytest.raises(ValueError, match="the draft model student has another tokenizer than the model"):
        Engine(model, tok, speculative=ModelDrafter(make_model(seed=3), swapped, name="student"))
    with pytest.raises(ValueError, match="draft k must be >= 1 token, got 0"):
        ModelDrafter(model, k=0)


def test_no_drafts_past_the_draft_models_context():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=1, speculative=ModelDrafter(make_model(max_seq_len=32)))
    req = run_alone(engine, prompt(n=24), SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    assert req.spec_drafted == 0 and len(req.token_ids) == 16


def test_a_drafts_cost_is_its_share_of_the_weight_bytes():
    model, tok = make_model(), make_tokenizer()  # float32
    half = ModelDrafter(make_model(dtype=torch.bfloat16))
    Engine(model, tok, speculative=half)
    assert half.cost == pytest.approx(0.5, abs=0.01) and half.min_acceptance == pytest.approx(0.6, abs=0.01)
    deep = make_model(n_layers=4)
    shallow = ModelDrafter(early_exit(deep, 2))
    Engine(deep, tok, speculative=shallow)
    assert 0.5 < shallow.cost < 0.9  # half the blocks, the whole embedding and head
