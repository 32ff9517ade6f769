"""Speculative sampling (ember/infer/speculative.py, draft.py): every token is distributed as
plain sampling draws it, for a deterministic (prompt-lookup) draft and for a draft model.

The end-to-end checks compare the frequencies of whole 3-token completions of a tiny model
(8-token vocabulary, top-k 2, 4 tokens: 16 possible completions) over seeded runs with the
exact probabilities computed from full forwards: a chi-square test with 15 degrees of
freedom, refused above 37.7 (p = 0.001). A rule that kept every draft, or resampled from p instead of
the residual, skews these frequencies far past that."""

import copy

import torch
from infer_helpers import make_tokenizer

from ember.infer.draft import ModelDrafter, target_probs
from ember.infer.engine import Engine
from ember.infer.sampling import SamplingParams
from ember.infer.speculative import verify_sampled
from ember.model.config import ModelConfig
from ember.model.transformer import Transformer

CHI2_DF15_P001 = 37.70
N_TOKENS = 4
PROMPT = [1, 2, 3, 4, 5, 6, 7, 0] * 3


def tiny(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.tiny(vocab_size=8)).double().eval()


def params(seed):
    return SamplingParams(seed=seed, top_k=2, max_tokens=N_TOKENS, ignore_eos=True)


@torch.no_grad()
def exact_completions(model) -> dict[tuple[int, ...], float]:
    """P(completion) for every N_TOKENS-token completion with non-zero probability."""
    out = {(): 1.0}
    for _ in range(N_TOKENS):
        nxt = {}
        for prefix, pr in out.items():
            logits = model(torch.tensor([PROMPT + list(prefix)]))[0, -1:]
            for t, pt in enumerate(target_probs(logits, params(0))[0].tolist()):
                if pt:
                    nxt[prefix + (t,)] = pr * pt
        out = nxt
    return out


def sampled_counts(engine, n):
    counts, drafted, accepted = {}, 0, 0
    for seed in range(n):
        req = engine.add_request(PROMPT, params(seed))
        while engine.has_unfinished():
            engine.step()
        counts[tuple(req.token_ids)] = counts.get(tuple(req.token_ids), 0) + 1
        drafted, accepted = drafted + req.spec_drafted, accepted + req.spec_accepted
    return counts, drafted, accepted


def chi_square(counts, exact, n):
    assert set(counts) <= set(exact), set(counts) - set(exact)  # nothing outside the support
    return sum((counts.get(o, 0) - n * p) ** 2 / (n * p) for o, p in exact.items())


def test_prompt_lookup_sampling_draws_the_plain_distribution():
    model, n = tiny(), 240
    engine = Engine(model, make_tokenizer(), max_batch_size=1, speculative="ngram", speculative_k=2)
    counts, drafted, accepted = sampled_counts(engine, n)
    assert 0 < accepted < drafted  # both the kept and the rejected branch ran
    assert chi_square(counts, exact_completions(model), n) < CHI2_DF15_P001


def test_draft_model_sampling_draws_the_plain_distribution():
    model, n = tiny(), 240
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a draft close to the target, not equal: q != p
        for p in draft.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    engine = Engine(model, make_tokenizer(), max_batch_size=1, speculative=ModelDrafter(draft), speculative_k=2)
    counts, drafted, accepted = sampled_counts(engine, n)
    assert 0 < accepted < drafted
    assert chi_square(counts, exact_completions(model), n) < CHI2_DF15_P001


def test_verify_sampled_keeps_the_first_token_distributed_as_p_and_stops_at_a_rejection():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.2, 0.2, 0.2, 0.4], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    n, first, second_after_kept = 10000, torch.zeros(4), torch.zeros(4)
    for _ in range(n):
        draft = [int(torch.multinomial(q[0], 1, generator=g)), 3]
        out, ok = verify_sampled(p, draft, q, g)
        assert len(out) == ok + 1 and out[:ok] == draft[:ok]
        first[out[0]] += 1
        if ok >= 1:
            second_after_kept[out[1]] += 1
    assert first[3] == 0  # p(3) = 0: never emitted, even when drafted
    assert torch.allclose(first / n, p[0].float(), atol=0.02), first / n  # 4 sigma at n = 10000
    share = second_after_kept / second_after_kept.sum()
    assert torch.allclose(share, p[1].float(), atol=0.025), share  # ~6000 kept: 4 sigma


def test_a_one_hot_draft_is_kept_with_probability_p():
    g = torch.Generator().manual_seed(1)
    p = torch.tensor([[0.6, 0.3, 0.1], [1.0, 0.0, 0.0]], dtype=torch.float64)
    n = 10000
    kept = sum(verify_sampled(p, [1], None, g)[1] for _ in range(n))
    assert abs(kept / n - 0.3) < 0.02  # 4 sigma
    certain = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert all(verify_sampled(certain, [0], None, g) == ([0, 2], 1) for _ in range(5))  # p = 1: always kept
