"""The inference engine: continuous batching over a KV cache, sampling, detokenizing, stops.

The cache has `max_batch_size` rows; each row is a *slot* holding one running request at
its own position. A step is `schedule → run → postprocess`:

- schedule (scheduler.py): waiting requests take the free slots; their prompts go in by
  chunks of at most `prefill_chunk` tokens per step, and in the same step every running
  request advances by one token (a decode), so a long prompt never stalls the others for
  more than a chunk, and a finished or aborted request frees its slot at once.
- run: a chunk runs alone, into its prompt's cache row, at its positions (the running rows
  keep their K/V), and asks only for the last token's logits, or for every token's when the
  request wants prompt log-probs (then the prompt goes in whole). Decode feeds one token
  per slot at that slot's position; free slots are parked at position 0, prefilling ones
  where their next chunk writes.
- postprocess: sample one token per request (a prefill step returns the new requests'
  first tokens), record its log-probs if asked, stream-decode it to text (never half a
  UTF-8 character), cut at stop strings / stop tokens / EOS / max_tokens, free the slot.

Batch invariance: a request gets the same tokens whatever else runs beside it (same seed,
same tokens, bit for bit on CPU). Float results depend on op shapes, not only values: on
CPU the matmul kernels pick their reduction order by the number of rows (1-2 rows round
differently from 3+ at d_model 64; below ~16 rows from more at d_model 576), and SDPA's
vectorised softmax sums a key length that is not a multiple of its vector width differently,
even when the extra keys are masked. Right-padding a prompt beside a longer one changed
its logits by ~1e-7. So no shape depends on the neighbours: each prompt is prefilled
alone, every decode step runs all `max_batch_size` rows, and it attends over a key length
(`kv_len`) rounded up to 64 (extra masked keys add exact zeros) through SDPA's math
backend (CPU flash attention with 2+ threads rounds the rows its worker threads compute
differently from the calling thread's, so a row's numbers depended on its slot). The
price is that an underfull batch still computes its parked rows: SmolLM2-135M fp32 on one CPU thread decodes one request
at 20 tok/s with max_batch_size=1 and 8 tok/s with 8 (a full batch of 8: 65 tok/s in all).
`batch_invariant=False` decodes only rows 0..(highest busy slot) over the exact kv_len:
faster when underfull, and the tokens then match a lone run only up to float ties. On
GPUs, cuBLAS and attention kernels give no such promise either way.

For a server's /metrics: `engine.num_running` (requests holding a slot),
`engine.num_waiting` (queued, not yet admitted) and `engine.max_batch_size` (slots).

    >>> engine = Engine(model, tok)                                    # doctest: +SKIP
    >>> engine.generate([tok.encode("Hi")], SamplingParams(temperature=0))[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ember.model.kv_cache import KVCache

from .constrain_step import constrain_logits
from .fork import ForkGroup, fork_params, joins
from .prefill import PrefillMixin, eval_mode
from .prefix_cache import make_prefix_cache
from .request import (
    GenerationResult,
    Request,
    StopStringMatcher,
    StreamChunk,
    find_stop,
    partial_stop_len,
)
from .sampling import Sampler, SamplingParams, TokenLogprob, token_logprobs
from .scheduler import KV_LEN_STEP, PREFILL_CHUNK, drop_prefill, plan_step, run_plan
from .speculative import check_speculative, speculative_step

# Request bookkeeping and stop strings live in request.py; their names stay importable from here.
__all__ = ["Engine", "GenerationResult", "Request", "StopStringMatcher", "StreamChunk", "TokenLogprob",
           "find_stop", "partial_stop_len"]


# ---- the engine ---------------------------------------------------------------------


class Engine(PrefillMixin):
    """Generation over a `Transformer` and a `Tokenizer` with continuous batching.

    max_seq_len caps prompt + max_tokens (default and upper bound: the model's context).
    The KV cache is allocated at the first admission: max_batch_size rows, as many
    positions as the running requests need (longest prompt + max_tokens, rounded up to 64),
    so short chats don't allocate the full context. Admitting a longer request grows it
    (the running rows are copied over); admitting into an idle engine may shrink it.

    batch_invariant (see the module docstring): decode shapes that never depend on the
    neighbours, so a request's tokens are bitwise those of a lone run (default), or, with
    False, decode only as many rows as are busy.

    The model is left in the mode the caller gave it (a training recipe samples mid-run):
    each forward pass of the engine runs in eval mode and under inference mode, and gives
    the modules that were training their mode back afterwards.

    prefix_cache_mb > 0 keeps the K/V of prompt prefixes seen before, up to that many MiB,
    and prefills only what follows the longest cached one (prefix_cache.py): a chat's next
    turn or a shared system prompt. Tokens match an engine without it up to float ties.

    speculative="ngram" (prompt lookup) or a ModelDrafter (draft.py: a draft model, early exit)
    drafts up to speculative_k tokens and verifies them in one forward, for a lone request
    (speculative.py): greedy tokens as without it up to float ties, sampled ones in distribution.

    compile=True runs decode steps through `torch.compile(model, dynamic=True)`: one graph
    for every cache length, so Python and dispatch overhead per token shrinks (the first
    step pays a one-off compile of ~30 s on 2 cores; Inductor caches it on disk for the
    next process). Prefill stays eager: it is one big forward.
    """

    def __init__(
        self, model, tokenizer, max_batch_size: int = 8, max_seq_len: int | None = None,
        compile: bool = False, batch_invariant: bool = True, prefix_cache_mb: float = 0.0,
        speculative: str = "off", speculative_k: int = 8, prefill_chunk: int = PREFILL_CHUNK,
    ):
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not isinstance(batch_invariant, bool):
            raise ValueError(f"batch_invariant must be a bool, got {batch_invariant!r}")
        self.model = model  # left in the mode it came in: see _eval_mode
        self._decode_model = torch.compile(self.model, dynamic=True) if compile else self.model
        self.tokenizer = tokenizer
        self.config = model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        limit = self.config.max_seq_len
        if max_seq_len is not None and not 1 <= max_seq_len <= limit:
            raise ValueError(
                f"max_seq_len {max_seq_len} must be in 1..{limit} (the model's context)"
            )
        self.max_seq_len = max_seq_len or limit
        self.max_batch_size = max_batch_size
        self.batch_invariant = batch_invariant
        self.eos_ids = frozenset(tokenizer.eos_token_ids)
        self.prefix_cache = make_prefix_cache(model, prefix_cache_mb)
        speculative = check_speculative(speculative, model, tokenizer)  # "off", "ngram" or a ModelDrafter
        if isinstance(speculative_k, bool) or not isinstance(speculative_k, int) or speculative_k < 1:
            raise ValueError(f"speculative_k must be >= 1 draft token, got {speculative_k!r}")
        self.speculative, self.speculative_k = speculative, speculative_k
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 token, got {prefill_chunk!r}")
        self.prefill_chunk = prefill_chunk  # prompt tokens per step beside decode (scheduler.py)
        self.prefilling: list[Request] = []  # admitted, prompt not all in the cache yet
        self.waiting: deque[Request] = deque()
        self.slots: list[Request | None] = [None] * max_batch_size
        self.cache: KVCache | None = None
        # Per-slot state, made at the first admission (inside inference mode, like the cache).
        self.sampler: Sampler | None = None
        self._tokens: Tensor | None = None  # [B] last sampled token per slot
        self._positions: Tensor | None = None  # [B] position the next fed token sits at
        self._active: Tensor | None = None  # [B] 1 for a running slot, 0 for a free one

    # ---- requests ---------------------------------------------------------------------
    def add_request(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
                    constraint=None) -> Request:
        """Validate and queue one request; `step()` runs it. constraint: a `TokenConstraint`
        (ember.infer.constrained) that masks its logits; see constrain_step.py."""
        params = params or SamplingParams()
        prompt_ids = [int(t) for t in prompt_ids]
        n, m = len(prompt_ids), params.max_tokens
        if n == 0:
            raise ValueError("the prompt is empty: at least one token is needed")
        if n >= self.max_seq_len:
            raise ValueError(
                f"prompt of {n} tokens does not fit the context of {self.max_seq_len} tokens"
            )
        if n + m > self.max_seq_len:
            raise ValueError(
                f"prompt of {n} tokens + max_tokens {m} = {n + m} exceeds the context of "
                f"{self.max_seq_len} tokens; lower max_tokens to at most {self.max_seq_len - n}"
            )
        V = self.config.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < V]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary 0..{V - 1}")
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
        req = Request(
            prompt_ids, params, self.tokenizer.stream_decoder(), StopStringMatcher(params.stop),
            frozenset(stop_ids), t_arrival=time.perf_counter(), constraint=constraint,
        )
        prev = self.waiting[-1] if self.waiting else None
        if joins(prev, prompt_ids, params):  # the same prompt queued again: one prefill (fork.py)
            prev.fork = req.fork = prev.fork or ForkGroup()
            req.fork.pending += 1
        self.waiting.append(req)
        return req

    @property
    def num_running(self) -> int:
        """Requests holding a slot (admitted, not finished)."""
        return sum(r is not None for r in self.slots)

    @property
    def num_waiting(self) -> int:
        """Requests queued for a free slot."""
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    @torch.inference_mode()  # slot tensors are inference tensors (made inside step())
    def abort(self, req: Request) -> None:
        """Drop a request (e.g. a client hung up on its stream); its slot is free at once."""
        if req in self.waiting:
            self.waiting.remove(req)
            if req.fork is not None:
                req.fork.take()
                req.fork.release()
        if 0 <= req.slot < len(self.slots) and self.slots[req.slot] is req:
            self._free(req.slot)
        req.finish_reason = req.finish_reason or "abort"

    # ---- the step ---------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Admit waiting requests (prefill) or advance the running ones by one token
        (decode); returns the requests that got a token in this step."""
        kind, reqs = self._schedule()
        if kind == "decode" and self.speculative != "off" and speculative_step(self, reqs) is not None:
            return reqs  # drafted tokens verified in one forward (speculative.py)
        with self._eval_mode():
            logits = self._run(kind, reqs)  # [N, V], row j for reqs[j]
        if reqs:
            self._postprocess(reqs, logits)
        return reqs

    def _schedule(self) -> tuple[str, list[Request]]:
        """Admit, plan prefill chunks beside one decode (scheduler.py): "decode" when no chunk runs."""
        if not self.has_unfinished():
            raise RuntimeError("step() called with nothing to do")
        self._plan = plan_step(self)
        return ("prefill" if self._plan.chunks else "decode"), self._plan.reqs

    def _run(self, kind: str, reqs: list[Request]) -> Tensor:
        return run_plan(self, self._plan)

    def _postprocess(self, reqs: list[Request], logits: Tensor) -> None:
        rows = [r.slot for r in reqs]
        logits = constrain_logits(reqs, logits)  # the same tensor unless a request is constrained
        next_ids = self.sampler(logits, rows)  # [N]
        self.sampler.update(next_ids, rows)
        self._tokens[rows] = next_ids
        asked = [j for j, r in enumerate(reqs) if r.params.logprobs is not None]
        if asked:  # one log_softmax and top-k for every row that asked
            k = max(reqs[j].params.logprobs for j in asked)
            for j, lp in zip(asked, token_logprobs(logits[asked], next_ids[asked], k)):
                lp.top = lp.top[: reqs[j].params.logprobs]
                reqs[j].logprobs.append(lp)
        now = time.perf_counter()
        for req, tok in zip(reqs, next_ids.tolist()):  # one sync for the whole batch
            req.append(tok, now)
            if req.finished:
                self._free(req.slot)

    # ---- slots and cache --------------------------------------------------------------
    def _admit(self, new: list[Request], free: list[int]) -> None:
        """Give each new request a free slot (cache row) and fresh sampling state; the
        running slots keep theirs."""
        running = [r for r in self.slots if r is not None]
        need = max(len(r.prompt_ids) + r.params.max_tokens for r in new + running)
        self._ensure_cache(_round_up(need), shrink=not running)
        for r, i in zip(new, free):
            self.slots[i], r.slot = r, i
            self.sampler.set_row(i, r.params, r.prompt_ids)
            self._positions[i] = len(r.prompt_ids)  # the first sampled token goes there
            self._active[i] = 1

    def _free(self, i: int) -> None:
        # A free slot may still ride along in decode steps (every row does when
        # batch_invariant), fed at position 0 so it neither lengthens kv_len nor
        # runs off the cache. The next prompt prefilled into it overwrites its stale K/V.
        req, self.slots[i] = self.slots[i], None
        partial = req is not None and drop_prefill(self, req)  # its row holds part of a prompt
        if self.prefix_cache is not None and req is not None and not partial:  # what its row holds, for a next turn
            self.prefix_cache.insert(req.prompt_ids + req.token_ids[:-1], lambda s, e: self.cache.read(i, s, e))
        self._active[i] = 0
        self._positions[i] = 0
        self.sampler.clear_row(i)

    def _ensure_cache(self, seq_len: int, shrink: bool) -> None:
        """A cache of max_batch_size rows and at least seq_len positions. Growing copies
        what the rows hold; with nothing running (shrink) a much larger cache is dropped."""
        B, c = self.max_batch_size, self.cache
        if self.sampler is None:
            self.sampler = Sampler(B, self.config.vocab_size, self.device)
            self._tokens = torch.zeros(B, dtype=torch.long, device=self.device)
            self._positions = torch.zeros(B, dtype=torch.long, device=self.device)
            self._active = torch.zeros(B, dtype=torch.long, device=self.device)
        fits = c is not None and c.batch_size == B and c.max_seq_len >= seq_len
        if fits and not (shrink and c.max_seq_len > 2 * seq_len):
            return
        keep = c if (c is not None and c.batch_size == B and not shrink) else None
        self.cache = None  # free the old buffers first when nothing has to be copied
        self.cache = KVCache.for_model(self.model, B, seq_len)
        if keep is not None:  # running rows: their K/V moves into the larger buffers
            n = keep.max_seq_len
            for new, old in zip(self.cache.k + self.cache.v, keep.k + keep.v):
                new[:, :, :n].copy_(old)
        if self._decode_model is not self.model:  # one compiled graph for every cache length
            for buf in (*self.cache.k, *self.cache.v):  # (B, Hkv, Tmax, Dh)
                torch._dynamo.mark_dynamic(buf, 2)

    def _eval_mode(self):
        return eval_mode(self.model)

    def _attention(self):
        return _batch_invariant_attention(self.batch_invariant)

    # ---- the decode forward pass (prefill: prefill.py) ------------------------------------
    @torch.inference_mode()
    def decode(self, tokens: Tensor, positions: Tensor, kv_len: int | None = None) -> Tensor:
        """Feed one token to each of cache rows 0..n-1: tokens [n] at positions [n] → logits
        [n, V]. kv_len ≥ max(positions) + 1 when the caller knows it (no read-back from the
        tensor)."""
        n = len(tokens)
        cache = self.cache if n == self.cache.batch_size else self.cache.rows(0, n)
        model = self._decode_model if kv_len is not None else self.model
        with self._eval_mode(), _batch_invariant_attention(self.batch_invariant):
            return model(tokens[:, None], cache, positions[:, None], kv_len=kv_len)[:, 0]  # [n, V]

    # ---- front doors ------------------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        constraints: Sequence | None = None,
        n: int = 1,
    ) -> list[GenerationResult]:
        """Generate for every prompt (batched, up to max_batch_size at a time); constraints:
        one `TokenConstraint` (or None) per prompt. n samples per prompt share one prefill
        (fork.py): results prompt-major (prompt p's sample i at p * n + i), seeds seed + i.

        >>> [r.text for r in engine.generate([ids], SamplingParams(max_tokens=8))]  # doctest: +SKIP
        """
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        constraints = [None] * len(prompts) if constraints is None else list(constraints)
        if len(constraints) != len(prompts):
            raise ValueError(f"{len(constraints)} constraints for {len(prompts)} prompts")
        forked = [fork_params(sp, n) for sp in params]  # checks n
        if n > 1 and any(c is not None for c in constraints):
            raise ValueError(f"n={n} samples with a constraint: a constraint follows one sample; give one per request")
        prompts = [p for p in prompts for _ in range(n)]
        params, constraints = [sp for f in forked for sp in f], [c for c in constraints for _ in range(n)]
        if self.has_unfinished():
            raise RuntimeError("the engine is busy with other requests")
        reqs = [self.add_request(p, sp, c) for p, sp, c in zip(prompts, params, constraints)]
        try:
            while self.has_unfinished():
                self.step()
        except BaseException:
            for r in reqs:
                self.abort(r)
            raise
        return [r.result() for r in reqs]

    def stream(
        self, prompt_ids: Sequence[int], params: SamplingParams | None = None, constraint=None
    ) -> Iterator[StreamChunk]:
        """Yield the reply as it is generated; the last chunk carries the GenerationResult.

        >>> for chunk in engine.stream(ids, SamplingParams(temperature=0)):  # doctest: +SKIP
        ...     print(chunk.text, end="", flush=True)
        """
        if self.has_unfinished():
            raise RuntimeError("the engine is busy with other requests")
        req = self.add_request(prompt_ids, params, constraint)
        try:
            while not req.finished:
                self.step()
                if not req.finished and req.delta:
                    yield StreamChunk(req.take_delta())
            yield StreamChunk(req.take_delta(), req.result())
        finally:  # the consumer stopped early (or an error): free the slot
            if not req.finished:
                self.abort(req)


def _batch_invariant_attention(on: bool):
    """SDPA's math backend when batch invariant: a row's numbers do not depend on its slot."""
    return sdpa_kernel(SDPBackend.MATH) if on else nullcontext()


def _round_up(n: int, step: int = KV_LEN_STEP) -> int:
    """n rounded up to a multiple of step: `_round_up(65)` is 128."""
    return -(-n // step) * step
