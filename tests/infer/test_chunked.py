"""Chunked prefill (ember/infer/scheduler.py): a long prompt goes in by chunks while the
running streams keep decoding, its tokens are those of a whole-prompt prefill, a chunk's
cut never depends on the neighbours, and an abort mid-prompt leaves nothing behind."""

import pytest
import torch
from infer_helpers import make_model, make_tokenizer

from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams
from ember.kernels.build import load_kernels
from ember.kernels.decode import apply_native
from ember.model import ModelConfig, Transformer

GREEDY = SamplingParams(temperature=0, max_tokens=12, logprobs=2, ignore_eos=True)


def long_prompt(n: int = 90, seed: int = 1) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_chunked_prefill_gives_the_whole_prompt_prefill_tokens():
    model, tok = make_model(), make_tokenizer()
    whole = Engine(model, tok, max_batch_size=2).generate([long_prompt()], GREEDY)[0]
    chunked_engine = Engine(model, tok, max_batch_size=2, prefill_chunk=16)
    chunks = []
    inner = chunked_engine._prefill_row
    chunked_engine._prefill_row = lambda p, row, *a, **kw: chunks.append(len(p)) or inner(p, row, *a, **kw)
    chunked = chunked_engine.generate([long_prompt()], GREEDY)[0]
    assert chunks == [16, 32, 48, 64, 80, 90]  # the prompt's prefix up to each chunk's end
    assert chunked.token_ids == whole.token_ids
    for a, b in zip(chunked.logprobs, whole.logprobs):  # other matmul shapes: float rounding only
        assert abs(a.logprob - b.logprob) < 1e-4


def test_a_running_stream_keeps_decoding_while_a_long_prompt_goes_in():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=2, prefill_chunk=16)
    running = engine.add_request([1, 2, 3], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    engine.step()
    engine.step()
    late = engine.add_request(long_prompt(), GREEDY)
    steps = 0
    while not late.token_ids:
        before = len(running.token_ids)
        got = engine.step()
        steps += 1
        assert running in got and len(running.token_ids) == before + 1  # one token every step
    assert steps == 6  # 90 tokens in chunks of 16: the first token comes with the sixth
    while engine.has_unfinished():
        engine.step()
    assert late.result().token_ids == Engine(model, tok, max_batch_size=2).generate([long_prompt()], GREEDY)[0].token_ids
    solo = Engine(model, tok, max_batch_size=2).generate([[1, 2, 3]], running.params)[0]
    assert running.result().token_ids == solo.token_ids


def test_chunks_do_not_depend_on_the_neighbours_bit_for_bit():
    """Batch invariant: a long prompt beside others (which spend the step's budget first)
    gets the very log-probs it gets alone, since its chunks are cut at multiples of the chunk."""
    model, tok = make_model(), make_tokenizer()
    alone = Engine(model, tok, max_batch_size=3, prefill_chunk=16).generate([long_prompt()], GREEDY)[0]
    engine = Engine(model, tok, max_batch_size=3, prefill_chunk=16)
    others = [engine.add_request(long_prompt(n, seed=n), GREEDY) for n in (7, 23)]
    late = engine.add_request(long_prompt(), GREEDY)
    while engine.has_unfinished():
        engine.step()
    assert all(r.finished for r in others)
    assert late.result().token_ids == alone.token_ids and late.result().logprobs == alone.logprobs


def test_abort_mid_prompt_frees_the_slot_and_caches_nothing():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=1, prefill_chunk=16, prefix_cache_mb=4)
    first = engine.add_request(long_prompt(), GREEDY)
    engine.step()
    engine.step()  # 32 of 90 prompt tokens in
    assert first.prefilled == 32 and not first.token_ids
    engine.abort(first)
    assert first.finish_reason == "abort" and engine.num_running == 0 and not engine.prefilling
    assert engine.prefix_cache.match(long_prompt()[:-1])[0] == 0  # half a prompt is not cached
    again = engine.generate([long_prompt()], GREEDY)[0]
    assert again.token_ids == Engine(model, tok, max_batch_size=1).generate([long_prompt()], GREEDY)[0].token_ids


def test_prefix_cache_hit_starts_chunking_after_the_cached_blocks():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=1, prefill_chunk=16, prefix_cache_mb=4)
    engine.generate([long_prompt()], GREEDY)
    fed = []
    inner = engine._prefill_row
    engine._prefill_row = lambda p, row, start=0, **kw: fed.append((start, len(p))) or inner(p, row, start=start, **kw)
    again = engine.generate([long_prompt()[:70] + long_prompt(20, seed=2)], GREEDY)[0]  # shares 70 tokens
    assert again.cached_tokens == 70 and fed == [(70, 80), (80, 90)]


@pytest.mark.parametrize("bad", [0, -3, True, 2.5])
def test_bad_prefill_chunk_is_refused(bad):
    with pytest.raises(ValueError, match=f"prefill_chunk must be >= 1 token, got {bad!r}"):
        Engine(make_model(), make_tokenizer(), prefill_chunk=bad)


def test_native_decode_runs_only_the_busy_rows_and_stays_batch_invariant():
    """The native decode step computes each row alone, so even when batch invariant the
    engine decodes only rows 0..(highest busy slot), with the tokens and log-probs of a lone run."""
    if load_kernels() is None:
        pytest.skip("native kernels unavailable")
    torch.manual_seed(0)
    model, tok = apply_native(Transformer(ModelConfig.tiny(d_ff=256, vocab_size=260))), make_tokenizer()
    alone = Engine(model, tok, max_batch_size=4).generate([long_prompt(20)], GREEDY)[0]
    engine = Engine(model, tok, max_batch_size=4)
    rows = []
    decode = engine.decode
    engine.decode = lambda tokens, *a, **kw: rows.append(len(tokens)) or decode(tokens, *a, **kw)
    got = engine.generate([long_prompt(20), long_prompt(9, seed=2)], [GREEDY, SamplingParams(max_tokens=4, seed=1)])
    assert max(rows) == 2 and rows[-1] == 1  # never the 4 rows; the lone tail decodes one
    assert got[0].token_ids == alone.token_ids and got[0].logprobs == alone.logprobs


def test_without_batch_invariance_a_burst_of_prompts_prefills_in_one_padded_forward():
    model, tok = make_model(dtype=torch.float64), make_tokenizer()  # fp64: no float ties
    system = long_prompt(40, seed=9)  # a shared system prompt: one 32-token prefix-cache block
    ps = [system + long_prompt(n, seed=n) for n in (3, 11, 6, 30)]
    params = [GREEDY, SamplingParams(seed=5, max_tokens=6, logprobs=1), GREEDY, SamplingParams(seed=6, max_tokens=9)]
    alone = [Engine(model, tok, max_batch_size=1).generate([p], sp)[0] for p, sp in zip(ps, params)]
    engine = Engine(model, tok, max_batch_size=4, batch_invariant=False, prefix_cache_mb=4)
    shapes = []
    forward = engine.model.forward
    engine.model.forward = lambda ids, *a, **kw: shapes.append(tuple(ids.shape)) or forward(ids, *a, **kw)
    got = engine.generate(ps, params)
    # The first prompt alone (its blocks go into the prefix cache), then the other three
    # together from the cached 32 tokens on, padded to the longest (70 - 32 = 38).
    assert shapes[:2] == [(1, 43), (3, 38)] and all(s[1] == 1 for s in shapes[2:])
    assert [r.cached_tokens for r in got] == [0, 32, 32, 32]
    for a, b in zip(got, alone):
        assert a.token_ids == b.token_ids
        for x, y in zip(a.logprobs or [], b.logprobs or []):
            assert abs(x.logprob - y.logprob) < 1e-9


def test_without_batch_invariance_prompts_sharing_no_block_all_go_in_one_forward():
    model, tok = make_model(dtype=torch.float64), make_tokenizer()
    ps = [long_prompt(n, seed=n) for n in (40, 12, 35)]  # no two share a 32-token block
    engine = Engine(model, tok, max_batch_size=3, batch_invariant=False, prefix_cache_mb=4)
    shapes = []
    forward = engine.model.forward
    engine.model.forward = lambda ids, *a, **kw: shapes.append(tuple(ids.shape)) or forward(ids, *a, **kw)
    got = engine.generate(ps, GREEDY)
    assert shapes[0] == (3, 40) and all(s[1] == 1 for s in shapes[1:])
    for p, r in zip(ps, got):
        assert r.token_ids == Engine(model, tok, max_batch_size=1).generate([p], GREEDY)[0].token_ids
