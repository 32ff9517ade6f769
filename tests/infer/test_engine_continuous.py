"""Continuous batching: requests join between decode steps, finished or aborted ones free
their slot at once, and a request's tokens (and log-probs, bit for bit) do not depend on
what runs beside it. Log-probs: the chosen token's and the prompt's, against a plain
full forward."""

import pytest
import torch
from infer_helpers import make_model, make_tokenizer

from ember.infer.engine import Engine, TokenLogprob
from ember.infer.sampling import Sampler, SamplingParams


def prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 1, 17, 9, 30, 60)]


def mixed_params():
    kw = dict(ignore_eos=True)
    return [
        SamplingParams(temperature=0, max_tokens=14, logprobs=3, **kw),
        SamplingParams(seed=1, max_tokens=10, logprobs=2, **kw),
        SamplingParams(seed=2, temperature=1.3, top_k=40, max_tokens=12, **kw),
        SamplingParams(seed=3, top_p=0.9, repetition_penalty=1.3, max_tokens=9, logprobs=1, **kw),
        SamplingParams(seed=4, min_p=0.05, frequency_penalty=0.5, max_tokens=11, **kw),
        SamplingParams(temperature=0, max_tokens=10, logprobs=0, prompt_logprobs=True, **kw),
    ]


def run_staggered(engine: Engine, arrivals: dict[int, list[int]], ps, params) -> list:
    """Add request i at the step number listed in `arrivals`; step until all are done."""
    reqs, n = {}, 0
    while len(reqs) < len(ps) or engine.has_unfinished():
        for i in arrivals.get(n, []):
            reqs[i] = engine.add_request(ps[i], params[i])
        if engine.has_unfinished():
            engine.step()
        n += 1
    return [reqs[i].result() for i in range(len(ps))]


# ---- scheduling --------------------------------------------------------------------------


@pytest.fixture(params=[1, 2])
def threads(request):
    """Both thread counts: with 2, CPU flash attention rounds the rows that its worker
    thread computes differently, so a request's log-probs depended on its slot."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_staggered_arrivals_give_each_request_what_it_gets_alone(threads):
    # fp32 on purpose: the engine keeps every shape independent of the neighbours, so even
    # the log-probs agree bit for bit, not just the tokens.
    model, tok = make_model(), make_tokenizer()
    ps, params = prompts(), mixed_params()
    alone = [Engine(model, tok, max_batch_size=3).generate([p], sp)[0] for p, sp in zip(ps, params)]
    engine = Engine(model, tok, max_batch_size=3)
    arrivals = {0: [0], 2: [1, 2], 4: [3], 5: [4], 9: [5]}  # 3, 4 and 5 wait for a slot
    together = run_staggered(engine, arrivals, ps, params)
    assert engine.cache.max_seq_len == 128  # grew (64 → 128) for the 60-token prompt mid-run
    for a, t in zip(alone, together):
        assert t.token_ids == a.token_ids
        assert t.logprobs == a.logprobs and t.prompt_logprobs == a.prompt_logprobs
    # other arrival orders, another slot count
    again = run_staggered(Engine(model, tok, max_batch_size=4), {0: [5, 3], 1: [4, 0, 2], 3: [1]}, ps, params)
    assert [r.token_ids for r in again] == [r.token_ids for r in alone]


def test_without_batch_invariance_decode_runs_only_the_busy_rows():
    model, tok = make_model(dtype=torch.float64), make_tokenizer()  # fp64: no float ties
    ps, params = prompts(), mixed_params()
    alone = [Engine(model, tok, max_batch_size=1).generate([p], sp)[0] for p, sp in zip(ps, params)]
    engine = Engine(model, tok, max_batch_size=4, batch_invariant=False)
    rows_fed, busy = [], []  # rows each decode ran; highest decoding slot + 1 then
    decode = engine.decode

    def counting(tokens, *a, **kw):
        rows_fed.append(len(tokens))
        busy.append(int(engine._active.nonzero().max()) + 1)
        return decode(tokens, *a, **kw)

    engine.decode = counting
    together = run_staggered(engine, {0: [0], 2: [1, 2], 4: [3], 5: [4], 9: [5]}, ps, params)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    for a, t in zip(alone, together):
        if a.logprobs:
            torch.testing.assert_close([e.logprob for e in t.logprobs], [e.logprob for e in a.logprobs])
    assert rows_fed[0] == 1 and max(rows_fed) == 4 and rows_fed == busy


def test_greedy_equals_a_full_forward_argmax_loop():
    model, tok = make_model(1, dtype=torch.float64), make_tokenizer()  # fp64: no argmax ties
    ps = prompts()[:4]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    got = run_staggered(Engine(model, tok, max_batch_size=2), {0: [2], 1: [0], 3: [1, 3]}, ps, [params] * 4)
    for p, r in zip(ps, got):
        seq = list(p)
        with torch.no_grad():
            for _ in range(8):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert r.token_ids == seq[len(p) :]


def test_a_new_request_joins_between_decode_steps():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=2)
    long_ = engine.add_request([1, 2, 3], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    short = engine.add_request([4, 5], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    waiting = engine.add_request([6] * 7, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert (engine.num_running, engine.num_waiting) == (0, 3)
    assert engine.step() == [long_, short]  # a prefill step: each gets its first token
    assert (engine.num_running, engine.num_waiting) == (2, 1)
    assert engine.step() == [long_, short] and engine.step() == [long_, short]
    assert short.finished and (engine.num_running, engine.num_waiting) == (1, 1)  # freed at once
    n = len(long_.token_ids)
    assert engine.step() == [waiting, long_]  # joins while long_ runs, which decodes in the same step
    assert len(waiting.token_ids) == 1 and len(long_.token_ids) == n + 1
    assert engine.step() == [long_, waiting]  # slot order: waiting took short's slot 1
    while engine.has_unfinished():
        engine.step()
    solo = Engine(model, tok, max_batch_size=2).generate([[6] * 7], waiting.params)[0]
    assert waiting.result().token_ids == solo.token_ids


def test_abort_frees_the_slot_for_a_waiting_request():
    model, tok = make_model(), make_tokenizer()
    engine = Engine(model, tok, max_batch_size=1)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    first = engine.add_request([1, 2, 3], SamplingParams(max_tokens=50, seed=0))
    second = engine.add_request([9, 8, 7, 6], params)
    engine.step()
    engine.step()
    engine.abort(first)
    assert first.finish_reason == "abort" and (engine.num_running, engine.num_waiting) == (0, 1)
    assert engine.step() == [second]
    while not second.finished:
        engine.step()
    assert second.token_ids == Engine(model, tok, max_batch_size=1).generate([[9, 8, 7, 6]], params)[0].token_ids
    engine.abort(second)  # aborting a finished request changes nothing
    assert second.finish_reason == "length" and not engine.has_unfinished()


def test_step_with_nothing_to_do_and_bad_switches_are_errors():
    engine = Engine(make_model(), make_tokenizer())
    with pytest.raises(RuntimeError, match="nothing to do"):
        engine.step()
    with pytest.raises(ValueError, match="batch_invariant must be a bool, got 'no'"):
        Engine(make_model(), make_tokenizer(), batch_invariant="no")


def test_sampler_rows_are_independent():
    """Setting, clearing and sampling some rows leaves the others' state and RNG alone."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    p = SamplingParams(seed=7, temperature=1.5, top_k=10, presence_penalty=0.5)
    ref = Sampler(1, 50)
    ref.set_row(0, p)
    want = [int(ref(logits[1:2])[0]) for _ in range(5)]
    s = Sampler(3, 50)
    s.set_row(1, p)
    got = []
    for i in range(5):
        if i == 2:
            s.set_row(0, SamplingParams(seed=1, top_p=0.5, repetition_penalty=1.2), [3, 4])
            s.set_row(2, SamplingParams(seed=2, min_p=0.1))
            s(logits[[0, 2]], [0, 2])  # the neighbours draw; row 1's generator must not move
            s.clear_row(0)
        got.append(int(s(logits[1:2], [1])[0]))
    assert got == want


# ---- log-probs ---------------------------------------------------------------------------


def test_prompt_logprobs_equal_a_full_forward():
    model, tok = make_model(), make_tokenizer()
    p = prompts()[2]
    r = Engine(model, tok).generate([p], SamplingParams(max_tokens=2, logprobs=4, prompt_logprobs=True))[0]
    assert len(r.prompt_logprobs) == len(p) and r.prompt_logprobs[0] is None
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([p]))[0].float(), dim=-1)  # [T, V]
    for t in range(1, len(p)):
        e = r.prompt_logprobs[t]
        assert e.token_id == p[t]
        torch.testing.assert_close(e.logprob, lp[t - 1, p[t]].item(), atol=1e-5, rtol=0)
        top_v, top_i = lp[t - 1].topk(4)
        assert [i for i, _ in e.top] == top_i.tolist()
        torch.testing.assert_close([v for _, v in e.top], top_v.tolist(), atol=1e-5, rtol=0)
    # without logprobs: the prompt tokens' log-probs, no alternatives
    r0 = Engine(model, tok).generate([p], SamplingParams(max_tokens=1, prompt_logprobs=True))[0]
    assert all(e.top == [] for e in r0.prompt_logprobs[1:]) and r0.logprobs is None


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=5),
        # log-probs come from the raw logits, not the tempered / penalised ones it drew from
        SamplingParams(seed=5, temperature=1.7, repetition_penalty=1.5, max_tokens=8, ignore_eos=True, logprobs=2),
    ],
)
def test_generated_logprobs_equal_a_full_forward(params):
    model, tok = make_model(), make_tokenizer()
    p = prompts()[0]
    engine = Engine(model, tok, max_batch_size=2)
    neighbour = engine.add_request(prompts()[3], SamplingParams(max_tokens=8, seed=0))
    req = engine.add_request(p, params)
    while engine.has_unfinished():
        engine.step()
    r = req.result()
    assert neighbour.result().logprobs is None
    assert len(r.logprobs) == len(r.token_ids) == 8
    seq = p + r.token_ids
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([seq]))[0].float(), dim=-1)  # [T, V]
    for k, (t, e) in enumerate(zip(r.token_ids, r.logprobs)):
        row = lp[len(p) - 1 + k]
        assert isinstance(e, TokenLogprob) and e.token_id == t and len(e.top) == params.logprobs
        torch.testing.assert_close(e.logprob, row[t].item(), atol=1e-5, rtol=0)
        assert [v for _, v in e.top] == sorted((v for _, v in e.top), reverse=True)
        assert [i for i, _ in e.top] == row.topk(params.logprobs).indices.tolist()
        if params.greedy:
            assert e.top[0] == (t, e.logprob)  # the greedy token is the top-1 alternative


def test_logprobs_validation_names_the_value():
    for bad in (-1, 21, 2.5, True, "3"):
        with pytest.raises(ValueError, match=f"logprobs must be None or an int in 0..20, got {bad!r}"):
            SamplingParams(logprobs=bad)
    with pytest.raises(ValueError, match="prompt_logprobs must be a bool, got 'yes'"):
        SamplingParams(prompt_logprobs="yes")
    assert SamplingParams(logprobs=20).logprobs == 20 and SamplingParams(logprobs=0).logprobs == 0


def test_no_logprobs_unless_asked():
    model, tok = make_model(), make_tokenizer()
    r = Engine(model, tok).generate([[1, 2]], SamplingParams(max_tokens=3, seed=0))[0]
    assert r.logprobs is None and r.prompt_logprobs is None
    r = Engine(model, tok).generate([[1, 2]], SamplingParams(max_tokens=3, seed=0, logprobs=0))[0]
    assert [e.top for e in r.logprobs] == [[], [], []] and r.prompt_logprobs is None
