"""The compiled decode step (Engine(compile=True)) generates what the eager one does."""

import torch
from infer_helpers import make_model, make_tokenizer

from ember.infer import Engine, SamplingParams
from ember.model.kv_cache import KVCache


def test_kv_len_from_the_caller_equals_reading_positions():
    model = make_model(0)
    cache_a, cache_b = KVCache.for_model(model, 2, 32), KVCache.for_model(model, 2, 32)
    ids = torch.randint(0, 256, (2, 6))
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]])
    with torch.no_grad():
        a = model(ids, cache_a, pos)
        b = model(ids, cache_b, pos, kv_len=6)
        torch.testing.assert_close(a, b)
        step = torch.tensor([[6], [2]])  # rows at different positions
        torch.testing.assert_close(model(ids[:, :1], cache_a, step), model(ids[:, :1], cache_b, step, kv_len=7))


def test_compiled_decode_matches_eager():
    torch._dynamo.reset()
    model, tok = make_model(1), make_tokenizer()
    prompts = [[5, 6, 7, 8, 9], [1], list(range(30, 47))]  # batch sizes and lengths vary
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    eager = Engine(model, tok).generate(prompts, params)
    compiled = Engine(model, tok, compile=True)
    assert [r.token_ids for r in compiled.generate(prompts, params)] == [r.token_ids for r in eager]
    # a second wave with another batch size and cache length reuses the dynamic graph
    again = compiled.generate(prompts[:1], params)
    assert again[0].token_ids == eager[0].token_ids
