"""The engine's sampler (sampling.py) in numpy, for the torch-free native runner (native_run.py).

The same transforms in the same order — repetition penalty, frequency/presence penalties,
temperature, top-k, top-p, min-p — then the same inverse-CDF draw, fed by the same random
stream: `TorchRandom` is torch's CPU generator (mt19937 seeded as `manual_seed` seeds it,
two 32-bit outputs per float64), so a seeded request draws the same u as the engine does and
picks the same token whenever the two paths' probabilities agree to the draw's precision.

>>> s = NumpySampler(SamplingParams(temperature=0), vocab_size=4)
>>> s(np.array([0.1, 3.0, 0.2, 0.0], dtype=np.float32))
1
>>> round(TorchRandom(0).uniform(), 6)  # torch.rand((), generator=manual_seed(0), dtype=float64)
0.970053
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .params import SamplingParams

_MT_N = 624


def _mt_key(seed: int) -> np.ndarray:
    """mt19937's initial state for a seed (init_genrand of its low 32 bits, as torch does)."""
    key = np.empty(_MT_N, dtype=np.uint32)
    x = seed & 0xFFFFFFFF
    key[0] = x
    for j in range(1, _MT_N):
        x = (1812433253 * (x ^ (x >> 30)) + j) & 0xFFFFFFFF
        key[j] = x
    return key


class TorchRandom:
    """Uniform float64 draws equal to `torch.rand((), generator=g, dtype=torch.float64)` for
    `g = torch.Generator().manual_seed(seed)`; seed None draws from OS entropy."""

    def __init__(self, seed: int | None):
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": _mt_key(seed), "pos": _MT_N}}

    def uniform(self) -> float:
        hi, lo = (int(v) for v in self._bits.random_raw(2))
        return (((hi << 32) | lo) & ((1 << 53) - 1)) * 2.0**-53


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 softmax of one row (-inf entries get 0)."""
    z = np.exp(logits - logits.max(), dtype=np.float32)
    return z / z.sum(dtype=np.float32)


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (ties at the k-th value kept); k = 0 keeps all.

    >>> apply_top_k(np.array([2.0, 1.0, 0.5, 0.1]), 2).tolist()
    [2.0, 1.0, -inf, -inf]
    """
    if k <= 0 or k >= logits.shape[0]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype)


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: drop a token when the probability mass before it already reaches p (the most
    likely token always stays; p = 1 keeps all)."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    mass_before = np.cumsum(probs, dtype=np.float32) - probs
    drop_sorted = mass_before >= np.float32(p)
    drop_sorted[0] = False
    drop = np.empty_like(drop_sorted)
    drop[order] = drop_sorted
    return np.where(drop, -np.inf, logits).astype(logits.dtype)


def apply_min_p(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Drop tokens less likely than min_p times the likeliest one."""
    if min_p <= 0.0:
        return logits
    probs = softmax(logits)
    return np.where(probs < probs.max() * np.float32(min_p), -np.inf, logits).astype(logits.dtype)


def draw(probs: np.ndarray, rng: TorchRandom) -> int:
    """Inverse-CDF draw, as sampling.draw: the first index whose float64 cumulative
    probability exceeds u·total."""
    cdf = np.cumsum(probs, dtype=np.float64)
    i = int(np.searchsorted(cdf, rng.uniform() * cdf[-1], side="right"))
    return min(i, probs.shape[0] - 1)


class NumpySampler:
    """One request's sampling state: its params, its random stream, and (only with
    penalties) which tokens it has seen (prompt + generated) and how often it generated each."""

    def __init__(self, params: SamplingParams, vocab_size: int, prompt_ids: Sequence[int] = ()):
        self.params, self.vocab_size = params, vocab_size
        self.rng = None if params.greedy else TorchRandom(params.seed)
        self.seen = self.counts = None
        if params.uses_penalties:
            self.seen = np.zeros(vocab_size, dtype=bool)
            self.seen[[t for t in prompt_ids if 0 <= t < vocab_size]] = True
            self.counts = np.zeros(vocab_size, dtype=np.float32)

    def _penalised(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        if self.seen is None:
            return logits
        pen = np.float32(p.repetition_penalty)
        logits = np.where(self.seen, np.where(logits > 0, logits / pen, logits * pen), logits)
        freq, pres = np.float32(p.frequency_penalty), np.float32(p.presence_penalty)
        return (logits - self.counts * freq - (self.counts > 0) * pres).astype(np.float32)

    def __call__(self, logits: np.ndarray) -> int:
        """Raw logits (V,) → the next token id."""
        logits = self._penalised(np.asarray(logits, dtype=np.float32))
        if self.rng is None:
            return int(np.argmax(logits))
        p = self.params
        logits = (logits / np.float32(p.temperature)).astype(np.float32)
        logits = apply_min_p(apply_top_p(apply_top_k(logits, p.top_k), p.top_p), p.min_p)
        return draw(softmax(logits), self.rng)

    def update(self, token_id: int) -> None:
        """Record a generated token (for the penalties)."""
        if self.seen is not None and 0 <= token_id < self.vocab_size:
            self.counts[token_id] += 1
            self.seen[token_id] = True
