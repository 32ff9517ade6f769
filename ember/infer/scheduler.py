"""What one engine step runs: admission, chunked prefill beside decode, and the decode rows.

A step of `Engine` (engine.py) is planned here:

- admit: waiting requests take the free slots (cache rows). An admitted request is
  *prefilling* until its whole prompt is in its row; its row is parked meanwhile (not
  active, at the position its prompt is filled up to, so a decode step that computes the
  row writes its scratch K/V where the next chunk, or its first token, overwrites it).
- prefill: the prefilling requests, oldest first, get their next *chunks* of at most
  `prefill_chunk` tokens until the step's budget (`prefill_chunk` tokens) is spent. Chunk
  boundaries sit at multiples of `prefill_chunk` (from where the prefix cache left off), so
  how a prompt is cut depends on the prompt alone, never on its neighbours. A request whose
  prompt is complete gets its last token's logits: its first token is sampled this step.
  Requests that ask for prompt log-probs or share a fork group's prefill (fork.py) are
  prefilled whole, as one chunk (prefill.py).
- decode: in the same step, every request past its prefill advances by one token.

Without batch invariance, the first chunks of prompts in consecutive slots (a burst of new
requests) go in one right-padded forward: one pass over the weights instead of one each.
With it, each prompt goes in alone anyway, so when decode steps are cheap (the native
decode step computes only the busy rows, each alone) a step completes at most one prompt:
its first token is out after one prompt's prefill and a decode step, not after the whole
burst's prefills, and the streams already running advance between them. Which step a
prompt completes in never changes its tokens (each row is computed alone either way).

So a long prompt never stalls the running streams for more than one chunk per token, and a
burst of new requests gets first tokens as soon as each prompt is in, not after all of them.

Decode rows: when batch invariant, every decode step computes all `max_batch_size` rows
(a float forward's rounding depends on the number of rows), unless the model computes each
row alone whatever the batch (`ember.kernels`' native decode step), when it, like
`batch_invariant=False`, runs only rows 0..(highest decoding slot).

    >>> plan = plan_step(engine)                                      # doctest: +SKIP
    >>> logits = run_plan(engine, plan)  # [len(plan.reqs), V]         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ember.kernels.build import load_kernels
from ember.kernels.decode import NativeTransformer

from .prefix_cache import write_blocks
from .request import Request

__all__ = ["KV_LEN_STEP", "PREFILL_CHUNK", "Plan", "decode_rows", "drop_prefill", "plan_step", "rows_independent", "run_plan"]

PREFILL_CHUNK = 256  # prompt tokens per chunk, and per step, beside the running streams
# Decode attends over a key length (kv_len) rounded up to this (and the cache is sized in
# multiples of it), so kv_len, and with it the float rounding, never depends on the neighbours.
KV_LEN_STEP = 64


@dataclass
class Plan:
    """One step: prefill chunks (request, start, stop), then one decode of `decoding`."""

    chunks: list[tuple[Request, int, int]] = field(default_factory=list)
    done: list[Request] = field(default_factory=list)  # prompts complete after the chunks
    decoding: list[Request] = field(default_factory=list)

    @property
    def reqs(self) -> list[Request]:
        """The requests that get a token this step, in the order of run_plan's logits."""
        return self.done + self.decoding


def rows_independent(model) -> bool:
    """Whether the model's decode step computes each row alone, whatever the batch (the
    native kernels' decode step: its rows share weight loads, never sums)."""
    return isinstance(model, NativeTransformer) and load_kernels() is not None


def _rows_independent(engine) -> bool:
    """rows_independent(engine.model), asked once per engine."""
    indep = engine.__dict__.get("_rows_independent")
    if indep is None:
        indep = engine._rows_independent = rows_independent(engine.model)
    return indep


def _admit(engine) -> None:
    free = [i for i, r in enumerate(engine.slots) if r is None]
    if not (engine.waiting and free):
        return
    new = [engine.waiting.popleft() for _ in range(min(len(free), len(engine.waiting)))]
    engine._admit(new, free)
    for r in new:
        r.prefilled = -1  # not started: the prefix cache is looked up at its first chunk
        engine._active[r.slot] = 0
        engine._positions[r.slot] = 0
        engine.prefilling.append(r)


def _whole(r: Request) -> bool:
    """Prefilled in one piece by prefill.py: prompt log-probs, or a fork group's shared prefill."""
    return bool(r.params.prompt_logprobs) or r.fork is not None


def plan_step(engine) -> Plan:
    """Admit what fits, then plan this step's prefill chunks and decode."""
    _admit(engine)
    C = engine.prefill_chunk
    plan, budget = Plan(), C
    one_done = engine.batch_invariant and _rows_independent(engine)  # one first token per step
    for r in list(engine.prefilling):
        if budget <= 0 or (one_done and plan.done):
            break
        T = len(r.prompt_ids)
        if _whole(r):
            plan.chunks.append((r, 0, T))
            budget -= T
        else:
            s = max(r.prefilled, 0)
            while budget > 0 and s < T:
                e = min(T, (s // C + 1) * C)
                plan.chunks.append((r, s, e))
                budget -= e - s
                s = e
            if s < T:
                continue
        plan.done.append(r)
    plan.decoding = [r for r in engine.slots if r is not None and r.prefilled == len(r.prompt_ids)]
    return plan


def run_plan(engine, plan: Plan) -> Tensor:
    """Run the chunks, then one decode step: logits [len(plan.reqs), V]."""
    last = _run_chunks(engine, plan.chunks)
    for r in engine.prefilling:  # parked where its next chunk (or its first token) writes
        engine._positions[r.slot] = max(r.prefilled, 0)
    for r in plan.done:
        engine.prefilling.remove(r)
    rows = [last[id(r)] for r in plan.done]
    if plan.decoding:
        rows.append(decode_rows(engine, plan.decoding))
    for r in plan.done:  # its first token, sampled from these logits, is fed at position T
        engine._positions[r.slot] = len(r.prompt_ids)
        engine._active[r.slot] = 1
    if not rows:
        return torch.empty(0, engine.config.vocab_size, device=engine.device)
    return torch.cat(rows)


def _start(engine, r: Request) -> None:
    """Before r's first chunk: copy the cached blocks of its prompt (all but its last token)."""
    if r.prefilled >= 0:
        return
    r.prefilled, pc = 0, engine.prefix_cache
    if pc is not None:
        r.cached_tokens, blocks = pc.match(r.prompt_ids[:-1])
        write_blocks(engine.cache, r.slot, blocks)
        r.prefilled = r.cached_tokens


def _filled(engine, r: Request, e: int, out: Tensor) -> Tensor | None:
    """r's prompt is in up to e: its last token's logits [1, V] if that ends the prompt."""
    r.prefilled = e
    if e < len(r.prompt_ids):
        return None
    if engine.prefix_cache is not None:  # now, so that requests running beside this one can share it
        engine.prefix_cache.insert(r.prompt_ids, lambda a, b: engine.cache.read(r.slot, a, b))
    return out


def _run_chunks(engine, chunks: list[tuple[Request, int, int]]) -> dict[int, Tensor]:
    """Run the planned chunks; the logits [1, V] of each prompt completed, by id(request)."""
    last, i = {}, 0
    while i < len(chunks):
        r, s, e = chunks[i]
        if _whole(r):
            last[id(r)], r.prefilled = engine._prefill_request(r), len(r.prompt_ids)
            i += 1
            continue
        group = _batchable(engine, chunks, i)
        if len(group) > 1:
            outs = _prefill_batch(engine, group)
        else:
            _start(engine, r)
            s = max(s, r.prefilled)
            outs = [engine._prefill_row(r.prompt_ids[:e], r.slot, start=s)] if s < e else [None]  # [1, V]
            group = [(r, s, e)]
        for (r, _, e), out in zip(group, outs):
            if out is not None and _filled(engine, r, e, out) is not None:
                last[id(r)] = out
        i += len(group)
    return last


def _batchable(engine, chunks, i: int) -> list[tuple[Request, int, int]]:
    """The chunks from i on that one padded forward can prefill together: only when not
    batch invariant (a row's numbers then depend on the rows beside it), each the first
    chunk of a prompt in the next slot up, the prefix cache already asked (a prompt that
    found nothing runs alone first when a later one starts with its first block, so that
    one finds it)."""
    if engine.batch_invariant:
        return chunks[i : i + 1]
    group = []
    for r, s, e in chunks[i:]:
        if _whole(r) or (group and (r.slot != group[-1][0].slot + 1 or any(g[0] is r for g in group))):
            break
        fresh = r.prefilled < 0
        _start(engine, r)
        s = max(s, r.prefilled)
        width = max([e - s] + [ge - gs for _, gs, ge in group])
        if s >= e or max(gs for _, gs, _ in [*group, (r, s, e)]) + width > engine.cache.max_seq_len:
            break
        group.append((r, s, e))
        if fresh and not r.cached_tokens and len(group) == 1 and _shares_block(engine, r, chunks[i + 1 :]):
            break
    return group or chunks[i : i + 1]


def _shares_block(engine, r: Request, later) -> bool:
    """Whether a later prompt starts with r's first prefix-cache block (then r goes first)."""
    pc = engine.prefix_cache
    if pc is None or len(r.prompt_ids) <= pc.block_size:
        return False
    head = r.prompt_ids[: pc.block_size]
    return any(q.prefilled < 0 and q.prompt_ids[: pc.block_size] == head for q, _, _ in later)


def _prefill_batch(engine, group: list[tuple[Request, int, int]]) -> list[Tensor]:
    """Prompt chunks [s, e) of consecutive slots in one forward, right-padded to the longest
    (the padding writes K/V past each chunk, where a later chunk or token overwrites it
    before anything reads it): each chunk's last-token logits [1, V]."""
    width = max(e - s for _, s, e in group)
    ids = torch.zeros(len(group), width, dtype=torch.long)
    for j, (r, s, e) in enumerate(group):
        ids[j, : e - s] = torch.tensor(r.prompt_ids[s:e])
    starts = torch.tensor([s for _, s, _ in group])[:, None]
    pos = starts + torch.arange(width)[None]  # [k, width]
    last = torch.tensor([e - s - 1 for _, s, e in group])
    first = group[0][0].slot
    cache = engine.cache.rows(first, first + len(group))
    out = engine.model(ids.to(engine.device), cache, pos.to(engine.device), logits_index=last.to(engine.device))
    return [out[j] for j in range(len(group))]  # each [1, V]


def decode_rows(engine, reqs: list[Request]) -> Tensor:
    """One decode step of the cache rows that reqs sit in: logits [len(reqs), V]."""
    kv_len = max(len(r.prompt_ids) + len(r.token_ids) for r in reqs)  # largest position fed + 1
    if engine.batch_invariant and not _rows_independent(engine):
        n, kv_len = engine.max_batch_size, -(-kv_len // KV_LEN_STEP) * KV_LEN_STEP
    else:  # rows past the highest busy slot sit out (admission fills the lowest slots)
        n = max(r.slot for r in reqs) + 1
    logits = engine.decode(engine._tokens[:n], engine._positions[:n], kv_len=kv_len)  # [n, V]
    engine._positions += engine._active  # parked and free slots stay where they are
    return logits[[r.slot for r in reqs]]  # [N, V]


def drop_prefill(engine, r: Request) -> bool:
    """Forget a request leaving its slot before its prompt is all in (an abort): True if it
    was prefilling (its row holds part of a prompt, nothing for the prefix cache)."""
    if r not in engine.prefilling:
        return False
    engine.prefilling.remove(r)
    if r.fork is not None:  # it never took its share of the group's prefill
        r.fork.take()
        r.fork.release()
    return True
