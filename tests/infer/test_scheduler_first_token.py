"""When a step completes a prompt (ember/infer/scheduler.py), and how the engine thread hands
tokens to the event loop (ember/infer/worker.py).

Batch invariant on the native decode step, a burst of new prompts gets its first tokens one
per step (each after one prompt's prefill, not after the whole burst's), with the tokens of
lone runs; on a float model, whose every decode step computes all rows, the burst still
completes in one step."""

import asyncio

import pytest
import torch
from infer_helpers import make_model, make_tokenizer

from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams
from ember.infer.worker import EngineWorker, Event, Job
from ember.kernels.build import load_kernels
from ember.kernels.decode import apply_native
from ember.model import ModelConfig, Transformer

GREEDY = SamplingParams(temperature=0, max_tokens=6, logprobs=2, ignore_eos=True)
SAMPLED = SamplingParams(seed=3, top_k=20, max_tokens=6, logprobs=1, ignore_eos=True)


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def native_model():
    if load_kernels() is None:
        pytest.skip("native kernels unavailable")
    torch.manual_seed(0)
    return apply_native(Transformer(ModelConfig.tiny(d_ff=256, vocab_size=260)))


def first_token_steps(engine: Engine, reqs) -> list[int]:
    """Run the engine dry; the step (1-based) at which each request got its first token."""
    firsts, step = [0] * len(reqs), 0
    while engine.has_unfinished():
        step += 1
        engine.step()
        for i, r in enumerate(reqs):
            if r.token_ids and not firsts[i]:
                firsts[i] = step
    return firsts


@pytest.mark.parametrize("prefix_cache_mb", [0, 1])
def test_native_burst_gets_one_first_token_per_step_with_the_tokens_of_lone_runs(prefix_cache_mb):
    model, tok = native_model(), make_tokenizer()
    pre = prompt(20, 9)  # a shared preamble (under one prefix-cache block)
    ps = [pre + prompt(n, n) for n in (12, 15, 3)]  # the first fills a whole block (32 tokens)
    params = [GREEDY, SAMPLED, GREEDY]
    alone = [Engine(model, tok, max_batch_size=1).generate([p], sp)[0] for p, sp in zip(ps, params)]
    engine = Engine(model, tok, max_batch_size=4, prefix_cache_mb=prefix_cache_mb)
    reqs = [engine.add_request(p, sp) for p, sp in zip(ps, params)]
    assert first_token_steps(engine, reqs) == [1, 2, 3]
    for r, a in zip(reqs, alone):
        got = r.result()
        assert got.token_ids == a.token_ids
        if not prefix_cache_mb:
            assert got.logprobs == a.logprobs  # bitwise
        else:  # reused K/V were computed in a forward of another length: float rounding
            assert [x.logprob for x in got.logprobs] == pytest.approx([x.logprob for x in a.logprobs], abs=1e-4)
    assert [r.cached_tokens for r in reqs] == ([0, 20, 20] if prefix_cache_mb else [0, 0, 0])


def test_a_running_stream_advances_while_the_burst_behind_it_goes_in():
    model, tok = native_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=4)
    running = engine.add_request(prompt(8, 1), SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    engine.step()
    burst = [engine.add_request(prompt(10, s), GREEDY) for s in (2, 3, 4)]
    for k in range(1, 4):
        engine.step()
        assert len(running.token_ids) == 1 + k  # one token per step, burst or not
        assert [bool(r.token_ids) for r in burst] == [i < k for i in range(3)]


def test_float_model_burst_completes_in_one_step():
    """Every decode step of a batch-invariant float model computes all rows: no extra steps."""
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=4)
    reqs = [engine.add_request(prompt(10, s), GREEDY) for s in (1, 2, 3)]
    assert first_token_steps(engine, reqs) == [1, 1, 1]


def test_without_batch_invariance_the_burst_completes_in_one_step():
    model, tok = native_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=4, batch_invariant=False)
    reqs = [engine.add_request(prompt(10, s), GREEDY) for s in (1, 2, 3)]
    assert first_token_steps(engine, reqs) == [1, 1, 1]


def test_the_engine_thread_wakes_each_event_loop_once_per_step_in_order():
    loop = asyncio.new_event_loop()
    try:
        calls = []
        inner = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: calls.append(a) or inner(*a)
        q1, q2 = asyncio.Queue(), asyncio.Queue()
        jobs = [Job(0, [1], None, loop, q1), Job(1, [1], None, loop, q2), Job(2, [1], None, loop, q1)]
        events = [Event(j.index, text=f"t{j.index}") for j in jobs]
        EngineWorker._send_all(list(zip(jobs, events)))
        assert len(calls) == 1
        loop.run_until_complete(asyncio.sleep(0))
        assert [q1.get_nowait().text, q1.get_nowait().text, q2.get_nowait().text] == ["t0", "t2", "t1"]
        loop.close()
        EngineWorker._send_all([(jobs[0], events[0])])  # a closed loop: dropped, no error
    finally:
        if not loop.is_closed():
            loop.close()
