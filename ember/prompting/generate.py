"""Sampling through the engine: prompts (text or chat messages) → n samples each.

`EngineGenerator.generate(prompts, n, ...)` queues every prompt's n samples at once, so the
engine batches them (continuous batching, `max_batch_size` at a time). Sample i of a prompt
uses seed `seed + i`: the samples differ, and a run is reproducible. When the engine's
`generate` takes `n` (samples that share one prefill of their prompt), it is used; otherwise
each sample is its own request and prefills the prompt again.

    >>> gen = EngineGenerator(Engine(model, tok), chat=True)                          # doctest: +SKIP
    >>> gen.generate([[{"role": "user", "content": "2+2?"}]], n=4, temperature=0.7)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass


@dataclass
class Sample:
    """One generated reply: its text, its number of generated tokens, the mean log-prob of
    those tokens (when asked for), why it ended ("stop" or "length"), and whether it ended
    on an end-of-sequence token (not a stop string)."""

    text: str
    tokens: int
    logprob: float | None = None
    finish_reason: str = "stop"
    eos: bool = False


class EngineGenerator:
    """Samples from an `ember.infer.Engine`; `chat` renders prompts with the chat template."""

    def __init__(self, engine, chat: bool = False):
        self.engine, self.chat = engine, chat
        self.tokenizer = engine.tokenizer
        self.shared_prefill = "n" in inspect.signature(engine.generate).parameters

    def encode(self, prompt) -> list[int]:
        """A plain prompt, chat messages, or (either of those, text the reply continues)."""
        if isinstance(prompt, tuple):
            base, cont = prompt
            return self.encode(base) + (self.tokenizer.encode(cont) if cont else [])
        if isinstance(prompt, str):
            if self.chat:
                raise ValueError("a chat generator takes messages, got a plain string")
            return self.tokenizer.encode(prompt, add_bos=None)
        from ember.tokenizer.chat import render_chat

        return render_chat(self.tokenizer, prompt, add_generation_prompt=True)[0]

    def generate(self, prompts: list, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                 stop: tuple[str, ...] = (), seed: int = 0, logprobs: bool = False) -> list[list[Sample]]:
        """n samples per prompt (greedy when temperature is 0: then n is 1)."""
        from ember.infer.sampling import SamplingParams

        if n < 1:
            raise ValueError(f"n must be >= 1 sample, got {n}")
        ids = [self.encode(p) for p in prompts]
        lp = 1 if logprobs else None
        if self.shared_prefill:
            params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed,
                                     logprobs=lp)] * len(ids)
            flat = self.engine.generate(ids, params, n=n)
        else:
            reqs = [(p, SamplingParams(temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed + i,
                                       logprobs=lp)) for p in ids for i in range(n)]
            flat = self.engine.generate([p for p, _ in reqs], [sp for _, sp in reqs])
        eos = self.engine.eos_ids
        out = [_sample(r, eos) for r in flat]
        return [out[i * n:(i + 1) * n] for i in range(len(ids))]


def _sample(r, eos_ids) -> Sample:
    lps = [t.logprob for t in r.logprobs] if r.logprobs else None
    mean = sum(lps) / len(lps) if lps else None
    ended = bool(r.token_ids) and r.token_ids[-1] in eos_ids
    return Sample(r.text, r.completion_tokens, mean, r.finish_reason, ended)
