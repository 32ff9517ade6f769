"""The engine leaves a caller's model in the mode it found it: a training recipe samples
mid-run and goes on training (LoRA dropout on), a served model stays in eval mode."""

import torch
from infer_helpers import make_model, make_tokenizer

from ember.infer import Engine, SamplingParams
from ember.model import KVCache
from ember.peft import LoraConfig, apply_lora

GREEDY = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)


def dropout_model():
    model = apply_lora(make_model(0), LoraConfig(rank=2, dropout=0.5, targets=["wq", "wv"]))
    with torch.no_grad():  # a live adapter, so that dropout would change the outputs
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    return model


def test_engine_keeps_a_training_model_training():
    model = dropout_model().train()
    engine = Engine(model, make_tokenizer(), max_batch_size=2)
    assert model.training and all(m.training for m in model.modules())
    out = engine.generate([[1, 2, 3], [4, 5]], GREEDY)
    assert all(m.training for m in model.modules())  # given back after every step
    # ...and the tokens were sampled in eval mode (no dropout): those of an eval-mode run
    ref = Engine(dropout_model().eval(), make_tokenizer(), max_batch_size=2).generate([[1, 2, 3], [4, 5]], GREEDY)
    assert [r.token_ids for r in out] == [r.token_ids for r in ref]


def test_engine_keeps_a_mixed_mode_model_as_it_was():
    model = dropout_model().train()
    model.layers[0].eval()  # e.g. a frozen block a recipe keeps in eval mode
    before = {n: m.training for n, m in model.named_modules()}
    engine = Engine(model, make_tokenizer(), max_batch_size=1)
    engine.cache = KVCache.for_model(model, 1, 64)
    engine.prefill([[1, 2, 3]])  # the public forward passes, too
    engine.decode(torch.tensor([4]), torch.tensor([3]))
    engine.generate([[1, 2]], GREEDY)
    assert {n: m.training for n, m in model.named_modules()} == before


def test_engine_leaves_an_eval_model_in_eval():
    model = make_model(0).eval()
    Engine(model, make_tokenizer()).generate([[1, 2, 3]], GREEDY)
    assert not any(m.training for m in model.modules())
