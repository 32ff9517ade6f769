"""Engine invariants: cached decode == full forward, batched == one-by-one, seeded sampling
is batch-independent, stops/length/EOS behave, streaming never breaks UTF-8."""

import pytest
import torch
from infer_helpers import EOT, IM_END, ScriptedModel, make_model, make_tokenizer

from ember.infer import Engine, SamplingParams
from ember.model.kv_cache import KVCache

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 1, 17, 9, 30)]


# ---- the forward passes ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_cached_decode_logits_equal_full_forward(seed):
    model, tok = make_model(seed), make_tokenizer()
    engine = Engine(model, tok)
    ps = [p[:12] for p in prompts()[:3]]  # lengths 5, 1, 12: right padding in the prefill
    engine.cache = KVCache.for_model(model, len(ps), 64)
    last = engine.prefill(ps)  # [B, V]
    seqs = [list(p) for p in ps]
    steps = [last]
    g = torch.Generator().manual_seed(seed)
    positions = torch.tensor([len(p) for p in ps])
    for _ in range(6):
        nxt = torch.randint(0, 256, (len(ps),), generator=g)
        for s, t in zip(seqs, nxt.tolist()):
            s.append(t)
        steps.append(engine.decode(nxt, positions))
        positions += 1
    for b, s in enumerate(seqs):
        with torch.no_grad():
            full = model(torch.tensor([s]))[0]  # [T, V], no cache
        n0 = len(ps[b])
        for k, got in enumerate(steps):
            torch.testing.assert_close(got[b], full[n0 - 1 + k], atol=2e-5, rtol=1e-4)


def test_greedy_batched_equals_one_by_one():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=8)
    batched = engine.generate(prompts(), GREEDY)
    for p, r in zip(prompts(), batched):
        alone = engine.generate([p], GREEDY)[0]
        assert alone.token_ids == r.token_ids
        assert alone.text == r.text
        assert r.completion_tokens == 12 and r.finish_reason == "length"
        assert r.prompt_tokens == len(p)


def test_more_prompts_than_slots_wait_for_free_slots():
    model, tok = make_model(), make_tokenizer()
    big = Engine(model, tok, max_batch_size=8).generate(prompts(), GREEDY)
    small = Engine(model, tok, max_batch_size=2).generate(prompts(), GREEDY)
    assert [r.token_ids for r in big] == [r.token_ids for r in small]


def test_seeded_sampling_reproducible_and_batch_independent():
    model, tok = make_model(dtype=torch.float64), make_tokenizer()
    engine = Engine(model, tok)
    ps = prompts()[:3]
    params = [
        SamplingParams(seed=1, max_tokens=10, ignore_eos=True),
        SamplingParams(seed=2, top_k=40, temperature=1.3, max_tokens=10, ignore_eos=True),
        SamplingParams(seed=3, top_p=0.9, repetition_penalty=1.3, max_tokens=10, ignore_eos=True),
    ]
    together = [r.token_ids for r in engine.generate(ps, params)]
    assert together == [r.token_ids for r in engine.generate(ps, params)]
    for p, sp, toks in zip(ps, params, together):
        assert engine.generate([p], sp)[0].token_ids == toks
    # the same request beside a different neighbour
    mixed = engine.generate(
        [ps[0], ps[2]], [params[0], SamplingParams(temperature=0, max_tokens=4)]
    )
    assert mixed[0].token_ids == together[0]


# ---- stopping --------------------------------------------------------------------------


def scripted(text: str, prompt_len: int, tail: list[int] = (), **kw):
    tok = make_tokenizer()
    return ScriptedModel([*tok.encode(text), *tail], start=prompt_len, **kw), tok


def test_stop_string_cuts_text_and_is_never_streamed():
    prompt = [1, 2, 3]
    model, tok = scripted("Hello<|end|> world", len(prompt))
    engine = Engine(model, tok)
    params = SamplingParams(temperature=0, stop=("<|end|>",), max_tokens=50)
    r = engine.generate([prompt], params)[0]
    assert r.text == "Hello" and r.finish_reason == "stop"
    assert r.completion_tokens == len("Hello<|end|>")  # tokens up to the one completing the stop
    chunks = list(engine.stream(prompt, params))
    shown = ""
    for c in chunks:
        shown += c.text
        assert "Hello".startswith(shown)  # no '<', '<|', ... ever appears
    assert shown == "Hello" and chunks[-1].result.text == "Hello"


def test_partial_stop_is_released_when_it_does_not_complete():
    prompt = [7]
    model, tok = scripted("a <|en b", len(prompt), tail=[EOT])
    engine = Engine(model, tok)
    r = engine.generate([prompt], SamplingParams(temperature=0, stop=["<|end|>"], max_tokens=50))[0]
    assert r.text == "a <|en b" and r.finish_reason == "stop"  # EOS ended it
    r = engine.generate([prompt], SamplingParams(temperature=0, stop=["<|end|>"], max_tokens=4))[0]
    assert r.text == "a <|" and r.finish_reason == "length"  # held text flushed at the end


def test_eos_stop_token_ids_and_ignore_eos():
    prompt = [5, 6]
    model, tok = scripted("abc", len(prompt), tail=[IM_END, ord("z"), ord("q")])
    engine = Engine(model, tok)
    r = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=20))[0]
    assert (r.text, r.finish_reason, r.token_ids) == ("abc", "stop", [97, 98, 99, IM_END])
    r = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0]
    assert r.text == "abc<|im_end|>zq" and r.finish_reason == "length"
    r = engine.generate(
        [prompt], SamplingParams(temperature=0, stop_token_ids=[ord("b")], max_tokens=9)
    )[0]
    assert (r.text, r.finish_reason) == ("a", "stop")


def test_max_tokens():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok)
    for m in (1, 2, 7):
        r = engine.generate(
            [[1, 2, 3]], SamplingParams(temperature=0, max_tokens=m, ignore_eos=True)
        )[0]
        assert r.completion_tokens == len(r.token_ids) == m and r.finish_reason == "length"
        chunks = list(
            engine.stream([1, 2, 3], SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
        )
        assert chunks[-1].result.token_ids == r.token_ids


def test_streaming_never_breaks_utf8():
    text = "Hé é 🙂 wörld ñ 中文 é"
    prompt = [1]
    model, tok = scripted(text, len(prompt), tail=[EOT])
    assert any(
        len(tok.id_to_bytes(t)) == 2 and tok.id_to_bytes(t)[1] == 0xC3 for t in tok.encode(text)
    )
    engine = Engine(model, tok)
    chunks = [c.text for c in engine.stream(prompt, SamplingParams(temperature=0, max_tokens=80))]
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) == text
    assert len([c for c in chunks if c]) > 5  # it really streamed
    # a stop string right after a multi-byte character
    r = engine.generate([prompt], SamplingParams(temperature=0, stop=["wö"], max_tokens=80))[0]
    assert r.text == "Hé é 🙂 "


def test_stream_matches_generate_and_reports_stats():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok)
    p = prompts()[2]
    r = engine.generate([p], GREEDY)[0]
    chunks = list(engine.stream(p, GREEDY))
    final = chunks[-1].result
    assert "".join(c.text for c in chunks) == r.text == final.text
    assert final.token_ids == r.token_ids
    assert final.ttft_ms > 0 and final.decode_tok_s > 0 and final.prompt_tokens == len(p)


def test_abandoned_stream_frees_the_engine():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok)
    it = engine.stream([1, 2, 3], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    next(it)
    it.close()
    assert not engine.has_unfinished()
    assert engine.generate([[1, 2, 3]], GREEDY)[0].completion_tokens == 12


# ---- validation --------------------------------------------------------------------------


def test_too_long_prompt_names_both_numbers():
    model, tok = make_model(max_seq_len=64), make_tokenizer()
    engine = Engine(model, tok)
    with pytest.raises(ValueError, match=r"70 tokens.*64"):
        engine.generate([[1] * 70], GREEDY)
    with pytest.raises(ValueError, match=r"60 tokens \+ max_tokens 12 = 72.*64"):
        engine.generate([[1] * 60], GREEDY)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="999"):
        engine.generate([[999]], GREEDY)
    with pytest.raises(ValueError, match="max_seq_len 100"):
        Engine(model, tok, max_seq_len=100)
    assert not engine.has_unfinished()
    small = Engine(model, tok, max_seq_len=32)
    with pytest.raises(ValueError, match=r"30 tokens \+ max_tokens 12 = 42.*32"):
        small.generate([[1] * 30], GREEDY)
    assert small.generate([[1] * 20], GREEDY)[0].completion_tokens == 12
