"""Prefix caching (ember/infer/prefix_cache.py): a prompt that starts with blocks seen before
prefills only the rest, and its outputs are those of an engine without the cache: the same
greedy and seeded-sampled tokens, log-probs equal to float tolerance (the reused K/V were
computed in a forward of another length, and CPU matmuls round by the number of rows)."""

import pytest
import torch
from infer_helpers import make_model, make_tokenizer

from ember.infer.engine import Engine
from ember.infer.prefix_cache import PrefixCache
from ember.infer.sampling import SamplingParams


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


PARAMS = [
    SamplingParams(temperature=0, max_tokens=12, logprobs=3, ignore_eos=True),
    SamplingParams(seed=5, top_k=50, max_tokens=12, logprobs=2, ignore_eos=True),
]


def chat(engine: Engine, params: SamplingParams, turns: int = 3) -> list:
    """Each turn's prompt: the previous prompt + its reply + a new message."""
    prompt, out = tokens(40, 0), []
    for t in range(turns):
        r = engine.generate([prompt], params)[0]
        out.append(r)
        prompt = prompt + r.token_ids + tokens(9, t + 1)
    return out


@pytest.mark.parametrize("params", PARAMS)
def test_a_chat_with_the_prefix_cache_gets_what_it_gets_without(params):
    model, tok = make_model(), make_tokenizer()
    plain = chat(Engine(model, tok, max_batch_size=2), params)
    engine = Engine(model, tok, max_batch_size=2, prefix_cache_mb=1)
    cached = chat(engine, params)
    # turn 2 reuses turn 1's prompt and reply (40 + 11 fed tokens: one 32-token block),
    # turn 3 the blocks of turn 2's 61 prompt + 11 fed reply tokens (two blocks)
    assert [r.cached_tokens for r in cached] == [0, 32, 64]
    assert all(r.cached_tokens == 0 for r in plain)
    for a, b in zip(plain, cached):
        assert a.token_ids == b.token_ids
        for la, lb in zip(a.logprobs, b.logprobs):
            assert la.token_id == lb.token_id
            assert la.logprob == pytest.approx(lb.logprob, abs=1e-5)
            assert [t for t, _ in la.top] == [t for t, _ in lb.top]
            assert [v for _, v in la.top] == pytest.approx([v for _, v in lb.top], abs=1e-5)


def test_requests_running_together_share_a_system_prompt():
    model, tok = make_model(), make_tokenizer()
    system = tokens(70, 7)
    ps = [system + tokens(5, s) for s in (1, 2, 3)]
    sp = SamplingParams(temperature=0, max_tokens=6)
    plain = Engine(model, tok, max_batch_size=3).generate(ps, sp)
    engine = Engine(model, tok, max_batch_size=3, prefix_cache_mb=1)
    cached = engine.generate(ps, sp)
    assert [r.cached_tokens for r in cached] == [0, 64, 64]  # admitted in one step, prefilled in turn
    assert [r.token_ids for r in cached] == [r.token_ids for r in plain]
    assert engine.prefix_cache.hits == 2


def test_prompt_logprobs_bypass_the_cache_and_stay_bitwise():
    model, tok = make_model(), make_tokenizer()
    p = tokens(50, 3)
    sp = SamplingParams(temperature=0, max_tokens=4, logprobs=1, prompt_logprobs=True)
    engine = Engine(model, tok, prefix_cache_mb=1)
    engine.generate([p], SamplingParams(max_tokens=2))  # fills the cache
    r = engine.generate([p + [1]], sp)[0]
    assert r.cached_tokens == 0
    assert r.prompt_logprobs == Engine(model, tok).generate([p + [1]], sp)[0].prompt_logprobs


def test_a_block_is_found_only_under_the_blocks_before_it():
    pc = PrefixCache(block_size=2, budget_bytes=10**6)
    kv = lambda s, e: [(torch.arange(s, e, dtype=torch.float)[None, :, None],) * 2]  # noqa: E731
    pc.insert([1, 2, 3, 4, 5], kv)
    n, blocks = pc.match([1, 2, 3, 4, 6])
    assert n == 4 and [b[0][0][0, :, 0].tolist() for b in blocks] == [[0.0, 1.0], [2.0, 3.0]]
    assert pc.match([9, 9, 3, 4])[0] == 0  # block (3, 4) after another first block: no hit
    n, blocks = pc.match([1])  # inside the first block: token-granular
    assert n == 1 and [b[0][0][0, :, 0].tolist() for b in blocks] == [[0.0]]
    n, blocks = pc.match([1, 2, 3, 7])  # a whole block, then one token of the next
    assert n == 3 and [b[0][0][0, :, 0].tolist() for b in blocks] == [[0.0, 1.0], [2.0]]


def test_a_partial_block_is_the_longest_shared_head_among_its_siblings():
    pc = PrefixCache(block_size=4, budget_bytes=10**6)
    for tag, seq in enumerate([[1, 2, 5, 5], [1, 2, 3, 9], [1, 7, 7, 7]]):
        pc.insert(seq, lambda s, e, tag=tag: [(torch.arange(s, e, dtype=torch.float)[None, :, None] + 100 * tag,) * 2])
    n, blocks = pc.match([1, 2, 3, 4, 8])
    assert n == 3 and blocks[0][0][0][0, :, 0].tolist() == [100.0, 101.0, 102.0]  # the second sequence's
    assert pc.match([2, 2, 3])[0] == 0 and pc.hits == 1 and pc.queries == 2


def test_evicted_blocks_are_no_longer_found_in_part():
    one = 2 * 4 * 2
    pc = PrefixCache(block_size=2, budget_bytes=2 * one, block_bytes=one)
    kv = lambda s, e: [(torch.zeros(1, e - s, 1),) * 2]  # noqa: E731
    pc.insert([1, 2], kv)
    pc.insert([3, 4, 5, 6], kv)  # two more blocks: (1, 2) goes
    assert pc.match([1, 9])[0] == 0 and pc.match([3, 9])[0] == 1 and pc.match([3, 4, 5])[0] == 3
    pc.clear()
    assert pc.match([3, 4, 5])[0] == 0 and not pc._children


def test_burst_sharing_a_preamble_shorter_than_a_block_reuses_it_and_matches_without():
    """Prompts sharing a 20-token preamble (under one 32-token block) and differing after it:
    the first prefills whole, the others reuse its first 20 tokens' K/V, tokens as without."""
    model, tok = make_model(), make_tokenizer()
    pre = tokens(20, 11)
    ps = [pre + tokens(15, s) for s in (1, 2, 3, 4)]
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    plain = Engine(model, tok, max_batch_size=4).generate(ps, sp)
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_mb=1)
    cached = engine.generate(ps, sp)
    assert [r.cached_tokens for r in cached] == [0, 20, 20, 20]
    assert [r.token_ids for r in cached] == [r.token_ids for r in plain]


def test_lru_eviction_keeps_the_budget_and_evicts_leaves_first():
    one = 2 * 4 * 2  # bytes of a 2-token block of (1, 2, 1) float32 k and v
    pc = PrefixCache(block_size=2, budget_bytes=3 * one, block_bytes=one)
    kv = lambda s, e: [(torch.zeros(1, e - s, 1),) * 2]  # noqa: E731
    pc.insert([1, 2, 3, 4, 5, 6], kv)  # three blocks: the budget
    pc.insert([7, 8], kv)  # a fourth: the oldest leaf, (5, 6), goes
    assert pc.bytes <= 3 * one and len(pc.entries) == 3
    assert pc.match([1, 2, 3, 4, 5, 6])[0] == 4 and pc.match([7, 8])[0] == 2


@pytest.mark.parametrize("mb", [1e-6, -1, "big"])
def test_a_budget_below_one_block_is_refused_by_name(mb):
    with pytest.raises(ValueError, match=f"prefix_cache_mb {mb}|prefix_cache_mb must be a number"):
        Engine(make_model(), make_tokenizer(), prefix_cache_mb=mb)
    with pytest.raises(ValueError, match="less than one block"):
        PrefixCache(block_size=32, budget_bytes=10, block_bytes=100)


def test_the_chat_repl_reuses_the_earlier_turns():
    from ember.infer.chat import run_chat

    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, prefix_cache_mb=1)
    lines = iter(["Tell me about the sea and the lighthouse by the harbour.", "And the ships?"])
    printed = []

    def read(_prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    run_chat(engine, tok, system="Be brief.", params=SamplingParams(temperature=0, max_tokens=8),
             input_fn=read, print_fn=lambda *a, **k: printed.append(" ".join(map(str, a))))
    footers = [p for p in printed if p.startswith("[") and "tok/s" in p]
    assert len(footers) == 2 and "reused" not in footers[0]
    # the system prompt, turn 1 and its reply, in whole 32-token blocks (the byte tokenizer:
    # 94 prompt tokens + 7 fed reply tokens in turn 1)
    assert "96 prompt tokens reused" in footers[1]
