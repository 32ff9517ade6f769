"""Speculative decoding by prompt lookup (n-gram drafting), for greedy requests.

The draft: find the most recent earlier occurrence of the last n tokens of prompt + output
(n = 3, then 2, then 1) and propose the up to k tokens that followed it. Where the output
copies from the input (summarising, editing, quoting a given text) the draft is often right.
One forward feeds the last token and the draft at their positions and gives the model's
greedy choice after each; the draft is accepted up to its first disagreement, and the
model's own token there (or after the whole draft) comes free. So every step yields at least
one token, the model's greedy one, and a step costs one forward of k + 1 tokens.

K/V written for rejected draft tokens sit past the request's position; the tokens fed next
overwrite them before any query can see them (a query at position p sees positions <= p).

Exactness: each token is the argmax of the model's logits given the accepted tokens, as in
plain greedy decoding, but those logits come from a forward of k + 1 tokens instead of one,
and CPU matmuls round by the number of rows: the output is token-identical to plain greedy
decoding unless two candidates tie to within float rounding (tests/infer/test_speculative.py
checks identity in fp64 and fp32 on a tiny model).

It runs only where it is simple and pays: one running request and none waiting (a full
batch already uses the cores), greedy, without penalties, log-probs or a constraint; and a
request whose drafts are mostly rejected (under 20% of 32+ drafted tokens) stops drafting.

>>> ngram_draft([5, 6, 7, 8, 1, 5, 6], k=2)
[7, 8]
"""

from __future__ import annotations

import time

import torch

__all__ = ["SPECULATIVE_MODES", "accept_or_resample", "ngram_draft", "speculative_step"]

SPECULATIVE_MODES = ("off", "ngram")
MIN_ACCEPTANCE, PROBATION = 0.2, 32  # stop drafting below this share after this many drafted


def ngram_draft(tokens: list[int], k: int = 8, max_ngram: int = 3) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the last n tokens
    (the longest n <= max_ngram that occurs), or [] when none does."""
    L = len(tokens)
    for n in range(min(max_ngram, L - 1), 0, -1):
        tail = tokens[L - n :]
        for s in range(L - n - 1, -1, -1):  # most recent first
            if tokens[s : s + n] == tail:
                return tokens[s + n : s + n + k]
    return []


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, token: int, generator: torch.Generator) -> tuple[bool, int]:
    """The rejection step of speculative sampling (Leviathan et al. 2023): a draft `token`
    drawn from the draft distribution q [V] is kept with probability min(1, p[token] / q[token])
    under the target distribution p [V]; otherwise a token is drawn from max(p - q, 0),
    renormalised. The token returned is distributed exactly as p. A prompt-lookup draft is
    deterministic: q is one-hot on it. → (accepted, token). Not yet wired into the engine:
    sampled requests decode without drafts."""
    u = torch.rand((), generator=generator, device=p.device)
    if u * q[token] <= p[token]:
        return True, token
    residual = (p - q).clamp_min(0)
    return False, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


def _eligible(engine, reqs) -> bool:
    if len(reqs) != 1 or engine.waiting:
        return False
    r, p = reqs[0], reqs[0].params
    if not p.greedy or p.uses_penalties or p.logprobs is not None or r.constraint is not None:
        return False
    return r.spec_drafted < PROBATION or r.spec_accepted >= MIN_ACCEPTANCE * r.spec_drafted


def speculative_step(engine, reqs) -> list | None:
    """One draft-and-verify step for the lone running request, or None where it does not
    apply (then the engine takes a plain decode step)."""
    if not _eligible(engine, reqs):
        return None
    r = reqs[0]
    seq = r.prompt_ids + r.token_ids
    room = r.params.max_tokens - len(r.token_ids) - 1  # the last token comes from the model
    draft = ngram_draft(seq, k=min(engine.speculative_k, room)) if room > 0 else []
    if not draft:
        return None
    pos = len(seq) - 1  # where the last sampled token is fed
    ids = torch.tensor([[seq[-1], *draft]], dtype=torch.long, device=engine.device)
    input_pos = torch.arange(pos, pos + len(draft) + 1, device=engine.device)[None]
    with engine._eval_mode(), engine._attention():
        logits = engine.model(ids, engine.cache.rows(r.slot, r.slot + 1), input_pos)[0]  # [k+1, V]
    out = logits.float().argmax(-1).tolist()
    ok = 0
    while ok < len(draft) and draft[ok] == out[ok]:
        ok += 1
    r.spec_drafted += len(draft)
    r.spec_accepted += ok
    now = time.perf_counter()
    for t in out[: ok + 1]:
        r.append(t, now)
        if r.finished:
            break
    engine._tokens[r.slot] = r.token_ids[-1]
    engine._positions[r.slot] = len(r.prompt_ids) + len(r.token_ids) - 1
    if r.finished:
        engine._free(r.slot)
    return reqs
