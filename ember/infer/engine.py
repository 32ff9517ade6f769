"""The inference engine: prefill, decode, sample, detokenize, stop.

Each cache row is a *slot* holding one running request with its own position. A step is
`schedule → run → postprocess`:

- schedule: if nothing runs, admit up to `max_batch_size` waiting requests (a *prefill*
  step); otherwise advance the running ones by one token (a *decode* step). This version
  admits whole waves; a continuous-batching scheduler only has to change `_schedule` to
  fill free slots between decode steps (the model already takes per-row positions).
- run: one forward pass. Prefill sends every prompt at once, right-padded, each row at
  positions 0..len-1, and asks only for the logits of the last real token. Decode sends
  one token per slot at that slot's position.
- postprocess: sample one token per slot, stream-decode it to text (never half a UTF-8
  character), cut at stop strings / stop tokens / EOS / max_tokens.

    >>> engine = Engine(model, tok)                                    # doctest: +SKIP
    >>> engine.generate([tok.encode("Hi")], SamplingParams(temperature=0))[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ember.model.kv_cache import KVCache

from .sampling import Sampler, SamplingParams


@dataclass
class GenerationResult:
    """What one request produced. token_ids include a final EOS/stop token if one ended it
    (the text never does); finish_reason is "stop" (EOS, stop token or stop string) or
    "length" (max_tokens)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float  # request added → first token sampled (queue wait included)
    decode_tok_s: float  # tokens after the first / time after the first (0 if only one)


@dataclass
class StreamChunk:
    """A piece of streamed text; the last chunk of a stream also carries the result."""

    text: str
    result: GenerationResult | None = None


# ---- stop strings ---------------------------------------------------------------------


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest occurrence of any stop string in text, or -1.

    >>> find_stop("a END b STOP", ["STOP", "END"])
    2
    """
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits, default=-1)


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string: the
    text that must be held back while streaming, because the next token may complete it.

    >>> partial_stop_len("Hello <|e", ["<|end|>"])
    3
    """
    longest = max((len(s) for s in stops), default=1) - 1
    for n in range(min(longest, len(text)), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0


class StopStringMatcher:
    """Streaming stop-string cutter: `push(piece) -> (text safe to emit, stopped)`.

    It holds back the longest tail that could begin a stop string. Any stop occurrence
    must start inside that tail or later, so only the held tail plus the new piece is
    searched (no re-scan of the whole text), and emitted text never contains part of a stop.

    >>> m = StopStringMatcher(["END"])
    >>> m.push("abc E"), m.push("NDxyz")
    (('abc ', False), ('', True))
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self._held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        buf = self._held + piece
        i = find_stop(buf, self.stops)
        if i >= 0:
            self._held = ""
            return buf[:i], True
        n = partial_stop_len(buf, self.stops)
        self._held = buf[len(buf) - n :]
        return buf[: len(buf) - n], False

    def flush(self) -> str:
        """Release the held tail (the stream ended without completing a stop string)."""
        held, self._held = self._held, ""
        return held


# ---- one request --------------------------------------------------------------------


@dataclass(eq=False)
class Request:
    """One request's state from admission to finish."""

    prompt_ids: list[int]
    params: SamplingParams
    decoder: object  # the tokenizer's stream decoder
    stopper: StopStringMatcher
    stop_ids: frozenset[int]
    slot: int = -1
    token_ids: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    delta: str = ""  # text produced since the last `take_delta()`
    finish_reason: str | None = None
    t_arrival: float = 0.0  # add_request time: TTFT includes any wait in the queue
    t_first: float = 0.0
    t_last: float = 0.0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _emit(self, text: str) -> None:
        if text:
            self.text_parts.append(text)
            self.delta += text

    def append(self, token_id: int, now: float) -> None:
        """Take one sampled token: detokenize, check stops and length."""
        if not self.token_ids:
            self.t_first = now
        self.t_last = now
        self.token_ids.append(token_id)
        if token_id in self.stop_ids:  # EOS / stop token: its text is not part of the reply
            return self._finish("stop", self.decoder.flush())
        text, stopped = self.stopper.push(self.decoder.push(token_id))
        self._emit(text)
        if stopped:
            self.finish_reason = "stop"
        elif len(self.token_ids) >= self.params.max_tokens:
            self._finish("length", self.decoder.flush())

    def _finish(self, reason: str, tail: str) -> None:
        text, stopped = self.stopper.push(tail)
        self._emit(text)
        if not stopped:
            self._emit(self.stopper.flush())
        self.finish_reason = "stop" if stopped else reason

    def take_delta(self) -> str:
        d, self.delta = self.delta, ""
        return d

    def result(self) -> GenerationResult:
        n = len(self.token_ids)
        span = self.t_last - self.t_first
        return GenerationResult(
            text="".join(self.text_parts),
            token_ids=list(self.token_ids),
            finish_reason=self.finish_reason or "length",
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=n,
            ttft_ms=1000.0 * (self.t_first - self.t_arrival) if n else 0.0,
            decode_tok_s=(n - 1) / span if n > 1 and span > 0 else 0.0,
        )


# ---- the engine ---------------------------------------------------------------------


class Engine:
    """Generation over a `Transformer` and a `Tokenizer` with a preallocated KV cache.

    max_seq_len caps prompt + max_tokens (default and upper bound: the model's context).
    The cache is sized per wave: rows = requests in the wave, length = the longest
    prompt + max_tokens among them (rounded up to 64), so short chats don't allocate
    the full context.

    compile=True runs decode steps through `torch.compile(model, dynamic=True)`: one graph
    for every batch size and cache length, so Python and dispatch overhead per token
    shrinks (the first step pays a one-off compile of ~30 s on 2 cores; Inductor caches it
    on disk for the next process). Prefill stays eager: it is one big forward.
    """

    def __init__(
        self, model, tokenizer, max_batch_size: int = 8, max_seq_len: int | None = None, compile: bool = False
    ):
        if (
            isinstance(max_batch_size, bool)
            or not isinstance(max_batch_size, int)
            or max_batch_size < 1
        ):
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model.eval()
        self._decode_model = torch.compile(self.model, dynamic=True) if compile else self.model
        self._kv_len = 0  # max position fed in the next decode step + 1 (tracked in Python)
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
        self.eos_ids = frozenset(tokenizer.eos_token_ids)
        self.waiting: deque[Request] = deque()
        self.slots: list[Request | None] = []
        self.cache: KVCache | None = None
        self.sampler: Sampler | None = None
        self._tokens: Tensor | None = None  # [B] last sampled token per slot
        self._positions: Tensor | None = None  # [B] position the next fed token sits at
        self._active: Tensor | None = None  # [B] 1 for a running slot, 0 for a free one

    # ---- requests ---------------------------------------------------------------------
    def add_request(
        self, prompt_ids: Sequence[int], params: SamplingParams | None = None
    ) -> Request:
        """Validate and queue one request; `step()` runs it."""
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
            frozenset(stop_ids), t_arrival=time.perf_counter(),
        )  # fmt: skip
        self.waiting.append(req)
        return req

    def has_unfinished(self) -> bool:
        return bool(self.waiting) or any(r is not None for r in self.slots)

    @torch.inference_mode()  # slot tensors are inference tensors (made inside step())
    def abort(self, req: Request) -> None:
        """Drop a request (e.g. a client hung up on its stream)."""
        if req in self.waiting:
            self.waiting.remove(req)
        if 0 <= req.slot < len(self.slots) and self.slots[req.slot] is req:
            self._free(req.slot)
        req.finish_reason = req.finish_reason or "abort"

    # ---- the step ---------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Advance every request by one token; returns the requests that were in the step."""
        kind, reqs = self._schedule()
        logits = self._run(kind, reqs)
        self._postprocess(logits)
        return reqs

    def _schedule(self) -> tuple[str, list[Request]]:
        running = [r for r in self.slots if r is not None]
        if running:
            return "decode", running
        wave = [self.waiting.popleft() for _ in range(min(self.max_batch_size, len(self.waiting)))]
        if not wave:
            raise RuntimeError("step() called with nothing to do")
        self._admit(wave)
        return "prefill", wave

    def _run(self, kind: str, reqs: list[Request]) -> Tensor:
        if kind == "prefill":
            return self.prefill([r.prompt_ids for r in reqs])
        logits = self.decode(self._tokens, self._positions, kv_len=self._kv_len)
        self._positions += self._active  # free slots stay parked at position 0
        self._kv_len += 1
        return logits

    def _postprocess(self, logits: Tensor) -> None:
        next_ids = self.sampler(logits)  # [B]
        self.sampler.update(next_ids)
        self._tokens.copy_(next_ids)
        now = time.perf_counter()
        for i, tok in enumerate(next_ids.tolist()):  # one sync for the whole batch
            req = self.slots[i]
            if req is None:
                continue
            req.append(tok, now)
            if req.finished:
                self._free(i)

    # ---- slots and cache --------------------------------------------------------------
    def _admit(self, wave: list[Request]) -> None:
        """Give each request of a wave a slot (cache row) and fresh sampling state."""
        B = len(wave)
        need = max(len(r.prompt_ids) + r.params.max_tokens for r in wave)
        self._ensure_cache(B, min(-(-need // 64) * 64, self.max_seq_len))
        self.sampler = Sampler(B, self.config.vocab_size, self.device)
        self.slots = list(wave)
        for i, r in enumerate(wave):
            r.slot = i
            self.sampler.set_row(i, r.params, r.prompt_ids)
        lens = torch.tensor([len(r.prompt_ids) for r in wave], device=self.device)
        self._positions = lens  # after prefill, the sampled token goes at position len
        self._kv_len = max(len(r.prompt_ids) for r in wave) + 1
        self._tokens = torch.zeros(B, dtype=torch.long, device=self.device)
        self._active = torch.ones(B, dtype=torch.long, device=self.device)

    def _free(self, i: int) -> None:
        # A free slot still rides along in decode steps (the cache has a fixed batch), fed
        # at position 0 so it neither widens the attention span nor runs off the cache.
        self.slots[i] = None
        self._active[i] = 0
        self._positions[i] = 0

    def _ensure_cache(self, batch_size: int, seq_len: int) -> None:
        c = self.cache
        if c is None or c.batch_size != batch_size or c.max_seq_len < seq_len:
            self.cache = None  # free the old buffers before allocating new ones
            self.cache = KVCache.for_model(self.model, batch_size, seq_len)
            if self._decode_model is not self.model:  # one compiled graph for every cache shape
                for buf in (*self.cache.k, *self.cache.v):  # (B, Hkv, Tmax, Dh)
                    torch._dynamo.mark_dynamic(buf, 0)
                    torch._dynamo.mark_dynamic(buf, 2)

    # ---- the two forward passes ---------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> Tensor:
        """Run all prompts in one forward (right-padded) into cache rows 0..B-1; returns
        the logits [B, V] of each prompt's last token. The cache must have B rows."""
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(B, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        ids = ids.to(self.device)
        # Pads sit at positions past their row's end: causality hides them from real tokens,
        # and the row's decode steps overwrite them before any query can see them.
        input_pos = torch.arange(T, device=self.device).expand(B, T)  # [B, T]
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)  # [B]
        return self.model(ids, self.cache, input_pos, logits_index=last)[:, 0]  # [B, V]

    @torch.inference_mode()
    def decode(self, tokens: Tensor, positions: Tensor, kv_len: int | None = None) -> Tensor:
        """Feed one token per cache row: tokens [B] at positions [B] → logits [B, V].
        kv_len = max(positions) + 1 when the caller knows it (no read-back from the tensor)."""
        model = self._decode_model if kv_len is not None else self.model
        return model(tokens[:, None], self.cache, positions[:, None], kv_len=kv_len)[:, 0]  # [B, V]

    # ---- front doors ------------------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[GenerationResult]:
        """Generate for every prompt (batched, up to max_batch_size at a time).

        >>> [r.text for r in engine.generate([ids], SamplingParams(max_tokens=8))]  # doctest: +SKIP
        """
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        if self.has_unfinished():
            raise RuntimeError("the engine is busy with other requests")
        reqs = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        try:
            while self.has_unfinished():
                self.step()
        except BaseException:
            for r in reqs:
                self.abort(r)
            raise
        return [r.result() for r in reqs]

    def stream(
        self, prompt_ids: Sequence[int], params: SamplingParams | None = None
    ) -> Iterator[StreamChunk]:
        """Yield the reply as it is generated; the last chunk carries the GenerationResult.

        >>> for chunk in engine.stream(ids, SamplingParams(temperature=0)):  # doctest: +SKIP
        ...     print(chunk.text, end="", flush=True)
        """
        if self.has_unfinished():
            raise RuntimeError("the engine is busy with other requests")
        req = self.add_request(prompt_ids, params)
        try:
            while not req.finished:
                self.step()
                if not req.finished and req.delta:
                    yield StreamChunk(req.take_delta())
            yield StreamChunk(req.take_delta(), req.result())
        finally:  # the consumer stopped early (or an error): free the slot
            if not req.finished:
                self.abort(req)
