"""Speculative decoding: draft a few tokens cheaply, verify them in one forward of the model.

The drafters (draft.py): prompt lookup (`"ngram"`: the tokens that followed the latest
earlier occurrence of the last n tokens; where the output copies from the input, as in
summarising, editing or quoting a given text, the draft is often right), a small draft model
with the same tokenizer, or the model's own first blocks (early exit). One forward feeds the
last token and the k draft tokens at their positions and gives the model's logits after each.

- Greedy: the draft is accepted up to its first disagreement with the model's argmax, and the
  model's own token there (or after the whole draft) comes free. Each token is the argmax of
  the model's logits given the accepted tokens, as in plain greedy decoding, but from a
  forward of k + 1 tokens, and CPU matmuls round by the number of rows: the output is
  token-identical to plain greedy decoding unless two candidates tie to within float rounding.
- Sampling (Leviathan et al. 2023, Chen et al. 2023): draft token x, drawn from the draft's
  distribution q, is kept with probability min(1, p(x) / q(x)), where p is the model's
  distribution at that position (both under the request's temperature, top-k, top-p, min-p);
  at the first rejection a token is drawn from norm(max(0, p - q)) and the step ends; after a
  fully accepted draft one more token is drawn from p. Every token is then distributed as
  plain sampling would draw it (a different draw for the same seed, the same distribution).
  A prompt-lookup draft is deterministic: q is one-hot, x is kept with probability p(x), and
  a rejection draws from p without x.

Every step yields at least one token, and costs one forward of k + 1 tokens (plus, for a
draft model, its k one-token forwards). K/V written for rejected draft tokens sit past the
request's position; the tokens fed next overwrite them before any query can see them (a
query at position p sees positions <= p).

It switches itself off where it does not pay: with more than one request running or waiting
(a full batch already uses the cores), for penalties, log-probs or a constraint, and for a
request whose drafts are mostly rejected (after 32 drafted tokens, an acceptance below 20%
for prompt lookup, below the draft's cost + 0.1 for a draft model: draft.py).

>>> ngram_draft([5, 6, 7, 8, 1, 5, 6], k=2)
[7, 8]
"""

from __future__ import annotations

import time

import torch

from ember.kernels.decode import NativeTransformer

from .draft import ModelDrafter, ngram_draft, target_probs
from .sampling import draw

__all__ = ["SPECULATIVE_MODES", "accept_or_resample", "check_speculative", "ngram_draft", "speculative_pays",
           "speculative_step", "verify_greedy", "verify_sampled"]

SPECULATIVE_MODES = ("off", "ngram", "auto")  # or a ModelDrafter (draft.py)
MIN_ACCEPTANCE, PROBATION = 0.2, 32  # stop drafting below this share after this many drafted


def speculative_pays(model) -> bool:
    """Whether drafting can pay on this model: not on a NativeTransformer, whose one-token step
    is one native call while verifying k + 1 tokens runs its PyTorch forward (SmolLM2 Q4_1, one
    thread: a 5-token forward took 6.4x a native step, a 9-token one 8.4x)."""
    return not isinstance(model, NativeTransformer)


def check_speculative(speculative, model, tokenizer):
    """The engine's `speculative` argument, checked and resolved: "off", "ngram", "auto"
    (ngram where `speculative_pays`, else off), or a `ModelDrafter` (then checked against the
    model and tokenizer: same vocabulary)."""
    if isinstance(speculative, ModelDrafter):
        return speculative.bind(model, tokenizer)
    if speculative not in SPECULATIVE_MODES:
        raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE_MODES)} or a ModelDrafter, "
                         f"got {speculative!r}")
    if speculative == "auto":
        return "ngram" if speculative_pays(model) else "off"
    return speculative


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, token: int, generator: torch.Generator) -> tuple[bool, int]:
    """The rejection step of speculative sampling (Leviathan et al. 2023): a draft `token`
    drawn from the draft distribution q [V] is kept with probability min(1, p[token] / q[token])
    under the target distribution p [V]; otherwise a token is drawn from max(p - q, 0),
    renormalised. The token returned is distributed exactly as p. A prompt-lookup draft is
    deterministic: q is one-hot on it. → (accepted, token)."""
    u = torch.rand((), generator=generator, dtype=torch.float64, device=p.device)
    if u * q[token] < p[token]:  # u < 1: a token with p = q = 1 is always kept
        return True, token
    residual = (p.double() - q.double()).clamp_min(0)
    return False, int(draw(residual, generator))


def verify_greedy(logits: torch.Tensor, draft: list[int]) -> tuple[list[int], int]:
    """logits [k+1, V] after the last token and each draft token → (the tokens to append:
    the accepted draft and the model's own next one, the number of draft tokens accepted)."""
    out = logits.float().argmax(-1).tolist()
    ok = 0
    while ok < len(draft) and draft[ok] == out[ok]:
        ok += 1
    return out[: ok + 1], ok


def verify_sampled(probs: torch.Tensor, draft: list[int], q: torch.Tensor | None,
                   generator: torch.Generator) -> tuple[list[int], int]:
    """probs [k+1, V] (the model's, after the request's sampling transforms), the draft and
    its distributions q [k, V] (None: deterministic, one-hot) → (tokens to append, accepted)."""
    out = []
    for i, x in enumerate(draft):
        if q is None:
            qi = torch.zeros_like(probs[i])
            qi[x] = 1.0
        else:
            qi = q[i]
        ok, t = accept_or_resample(probs[i], qi, x, generator)
        out.append(t)
        if not ok:
            return out, i
    out.append(int(draw(probs[len(draft)], generator)))  # after a fully accepted draft
    return out, len(draft)


def _eligible(engine, reqs) -> bool:
    if len(reqs) != 1 or engine.waiting or engine.num_running != 1:  # others running, waiting or prefilling
        return False
    r, p = reqs[0], reqs[0].params
    if p.uses_penalties or p.logprobs is not None or r.constraint is not None:
        return False
    floor = MIN_ACCEPTANCE if engine.speculative == "ngram" else engine.speculative.min_acceptance
    return r.spec_drafted < PROBATION or r.spec_accepted >= floor * r.spec_drafted


def _draft(engine, r, seq: list[int], room: int, generator):
    drafter = engine.speculative
    if drafter == "ngram":
        return ngram_draft(seq, k=min(engine.speculative_k, room)), None
    return drafter.propose(r, seq, min(drafter.k or engine.speculative_k, room), generator)


def speculative_step(engine, reqs) -> list | None:
    """One draft-and-verify step for the lone running request, or None where it does not
    apply (then the engine takes a plain decode step)."""
    if not _eligible(engine, reqs):
        return None
    r = reqs[0]
    seq = r.prompt_ids + r.token_ids
    room = r.params.max_tokens - len(r.token_ids) - 1  # the last token comes from the model
    g = engine.sampler.generators[r.slot]
    draft, q = _draft(engine, r, seq, room, g) if room > 0 else ([], None)
    if not draft:
        return None
    pos = len(seq) - 1  # where the last sampled token is fed
    ids = torch.tensor([[seq[-1], *draft]], dtype=torch.long, device=engine.device)
    input_pos = torch.arange(pos, pos + len(draft) + 1, device=engine.device)[None]
    with engine._eval_mode(), engine._attention():
        logits = engine.model(ids, engine.cache.rows(r.slot, r.slot + 1), input_pos)[0]  # [k+1, V]
    if r.params.greedy:
        out, ok = verify_greedy(logits, draft)
    else:
        out, ok = verify_sampled(target_probs(logits, r.params), draft, q, g)
    if engine.speculative != "ngram":
        engine.speculative.accepted(len(seq), ok)
    r.spec_drafted += len(draft)
    r.spec_accepted += ok
    now = time.perf_counter()
    for t in out:
        r.append(t, now)
        if r.finished:
            break
    engine._tokens[r.slot] = r.token_ids[-1]
    engine._positions[r.slot] = len(r.prompt_ids) + len(r.token_ids) - 1
    if r.finished:
        engine._free(r.slot)
    return reqs
