"""Generation without torch: a 4-bit GGUF on the native kernels (ember.kernels.native_lm), the
engine's sampler in numpy (sampling_np.py) and its request bookkeeping (request.py).

What `ember generate` and `ember chat` run by default on such a file: the process never
imports torch (~190 MB of memory and ~2 s of start-up), the whole forward is native code,
and the numbers are the engine's native path's (the same kernels; decode steps identical).
One request at a time; the K/V of the previous request stay, so a request that starts with
the last one's tokens (a chat's next turn) prefills only what is new.

>>> runner = NativeRunner.load("smollm2")  # doctest: +SKIP
>>> next(iter(runner.stream(ids, SamplingParams(temperature=0)))).text  # doctest: +SKIP
'Hello'
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from .params import SamplingParams
from .request import Request, StopStringMatcher, StreamChunk
from .sampling_np import NumpySampler


def native_runner_unsupported(name_or_path, quant: str = "auto") -> str | None:
    """Why `NativeRunner.load` cannot run this model here, or None (torch-free checks only).

    quant "auto" and "native" may run natively; the file must be a llama-architecture GGUF
    whose block matrices are all Q4_1/Q4_0 (a 4-bit file: run on its own blocks), of a shape
    the kernels run, on a CPU and compiler that build them.

    >>> native_runner_unsupported("smollm2", quant="int8")
    "quant 'int8' runs on torch"
    """
    from gguf import GGMLQuantizationType as GT

    from ember.core.gguf import gguf_field, open_gguf
    from ember.core.registry import resolve_model
    from ember.kernels.build import load_kernels, unavailable_reason
    from ember.kernels.layout import native_unsupported
    from ember.model.gguf_config import config_from_gguf

    if quant not in ("auto", "native"):
        return f"quant {quant!r} runs on torch"
    path = resolve_model(name_or_path)
    if path.is_dir():
        return f"{path} is a folder, not a GGUF file"
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return f"{path} is not a GGUF file"
    reader = open_gguf(path)
    types = [t.tensor_type for t in reader.tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    if not types or not all(t in (GT.Q4_1, GT.Q4_0) for t in types):
        return f"{path.name} is not a 4-bit (Q4_1/Q4_0) GGUF"
    if gguf_field(reader, "general.architecture") != "llama":
        return f"{path.name} is not a llama-architecture GGUF"
    why = native_unsupported(config_from_gguf(reader))
    if why:
        return why
    return None if load_kernels() is not None else unavailable_reason()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class NativeRunner:
    """`stream(prompt_ids, params)` and `generate(...)` as the Engine has them, for one request
    at a time on a NativeLM."""

    def __init__(self, lm, tokenizer):
        self.lm, self.tokenizer = lm, tokenizer
        self.max_seq_len = lm.max_seq_len
        self.eos_ids = frozenset(tokenizer.eos_token_ids)
        self._cached: list[int] = []  # the tokens whose K/V row 0 of the cache holds

    @classmethod
    def load(cls, name_or_path, max_seq_len: int | None = None, threads: int | None = None) -> NativeRunner:
        from ember.core.registry import resolve_model
        from ember.kernels.native_lm import NativeLM
        from ember.tokenizer import load_tokenizer

        path = resolve_model(name_or_path)
        # The tokenizer first: its parse's garbage is freed before the weights arrive, so the
        # two never peak together (16 MB less peak memory for SmolLM2).
        tok = load_tokenizer(path)
        return cls(NativeLM.from_gguf(path, max_seq_len=max_seq_len, threads=threads), tok)

    def _check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        n, m, limit, V = len(prompt_ids), params.max_tokens, self.max_seq_len, self.lm.vocab_size
        if n == 0:
            raise ValueError("the prompt is empty: at least one token is needed")
        if n + m > limit:
            raise ValueError(f"prompt of {n} tokens + max_tokens {m} = {n + m} exceeds the context of "
                             f"{limit} tokens; lower max_tokens to at most {max(limit - n, 0)}")
        bad = [t for t in prompt_ids if not 0 <= t < V]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary 0..{V - 1}")
        if params.logprobs is not None or params.prompt_logprobs:
            raise ValueError("log-probs are not computed on the native runner; use the engine (--exact or --quant int4)")

    def _prefill(self, prompt_ids: list[int]):
        """Logits after the prompt, reusing the cached K/V of its longest common prefix with
        the last request (at least the last prompt token is run again, for its logits)."""
        keep = min(_common_prefix(self._cached, prompt_ids), len(prompt_ids) - 1)
        self.lm.truncate(keep)
        self._cached = list(prompt_ids[:keep])
        logits = self.lm.forward(prompt_ids[keep:])
        self._cached = list(prompt_ids)
        return logits, keep

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Iterator[StreamChunk]:
        """Stream one completion: text pieces as they are safe to show (stop strings held
        back), the last chunk carrying the GenerationResult."""
        params = params or SamplingParams()
        prompt_ids = [int(t) for t in prompt_ids]
        self._check(prompt_ids, params)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
        req = Request(prompt_ids, params, self.tokenizer.stream_decoder(), StopStringMatcher(params.stop),
                      frozenset(stop_ids), t_arrival=time.perf_counter())
        sampler = NumpySampler(params, self.lm.vocab_size, prompt_ids)
        logits, req.cached_tokens = self._prefill(prompt_ids)
        while True:
            token = sampler(logits)
            req.append(token, time.perf_counter())
            sampler.update(token)
            if req.finished:
                break
            delta = req.take_delta()
            if delta:
                yield StreamChunk(delta)
            logits = self.lm.forward([token])
            self._cached.append(token)
        yield StreamChunk(req.take_delta(), req.result())

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None) -> list:
        """One GenerationResult per prompt, run one after another."""
        results = []
        for ids in prompts:
            for chunk in self.stream(ids, params):
                if chunk.result is not None:
                    results.append(chunk.result)
        return results
