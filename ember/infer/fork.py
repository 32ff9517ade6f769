"""N samples of one prompt that share one prefill.

Requests with the same prompt queued one after another (the N samples of
`Engine.generate(prompts, params, n=N)`, the `n` choices of a server request) form a
`ForkGroup`: the first member admitted prefills the prompt, and its K/V, last-token logits
and prompt log-probs are kept until every member has been admitted; the others copy the
K/V into their own cache row instead of running the model. The copy holds the very numbers
a prefill of that prompt alone computes (each prompt is prefilled alone, in a shape that
does not depend on its row), so a forked sample is bit for bit the sample an independent
request with the same seed gets.

Seeds: sample i of `generate(..., n=N)` uses `params.seed + i`; an unseeded request
(seed None) gives N unseeded samples, each from its own OS-entropy generator.

>>> [p.seed for p in fork_params(SamplingParams(seed=7), 3)]
[7, 8, 9]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from .sampling import MAX_SEED, SamplingParams

__all__ = ["ForkGroup", "fork_params", "joins"]


@dataclass(eq=False)
class ForkGroup:
    """The requests that share one prefill; `pending` of them are not prefilled yet."""

    pending: int = 1
    kv: list | None = None  # per layer (k, v), each (Hkv, T, Dh): the prompt's K/V
    logits: Tensor | None = None  # [1, V]: the last prompt token's
    prompt_logprobs: list | None = None

    def take(self) -> bool:
        """One member is being prefilled: True if it can copy the kept prefill."""
        self.pending -= 1
        return self.logits is not None

    def keep(self, kv: list, logits: Tensor, prompt_logprobs: list) -> None:
        """The first member's prefill, kept while other members still wait for it."""
        if self.pending > 0:
            self.kv, self.logits, self.prompt_logprobs = kv, logits, prompt_logprobs

    def release(self) -> None:
        """Drop the kept prefill once nobody waits for it."""
        if self.pending <= 0:
            self.kv = self.logits = self.prompt_logprobs = None


def fork_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """The N samples' params: sample i seeded `seed + i` (None stays None)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be >= 1 sample per prompt, got {n!r}")
    if params.seed is None:
        return [params] * n
    if params.seed + n - 1 > MAX_SEED:
        raise ValueError(f"seed {params.seed} + n {n} - 1 exceeds the largest seed {MAX_SEED}")
    return [replace(params, seed=params.seed + i) for i in range(n)]


def joins(prev, prompt_ids: list[int], params: SamplingParams) -> bool:
    """Whether a new request may share the prefill of `prev` (the last queued request): the
    same prompt, and the same prompt log-probs asked (they are shared too)."""
    return (
        prev is not None
        and prev.prompt_ids == prompt_ids
        and prev.params.prompt_logprobs == params.prompt_logprobs
        and (not params.prompt_logprobs or prev.params.logprobs == params.logprobs)
    )
