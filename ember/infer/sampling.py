"""Sampling: pure functions from logits to the next token id.

Every function takes logits [B, V] (or [V]) and returns a tensor of the same shape; per-row
knobs are a Python number (same for all rows) or a tensor [B]. The order `Sampler` applies
them in is the usual one (HF/vLLM): penalties → temperature → top-k → top-p → min-p → draw.

    >>> import torch
    >>> apply_top_k(torch.tensor([2.0, 1.0, 0.5, 0.1]), 2)
    tensor([2., 1., -inf, -inf])

Temperature 0 (or below 1e-5) means greedy (argmax of the penalised logits). Each row
draws with its own `torch.Generator`, seeded from its request's `seed`, so a seeded request
samples the same tokens whether it runs alone or inside a batch.

Log-probs (`token_logprobs`) are read from the model's raw logits, before any of the
transforms above: they say what the model thinks, not what the sampler drew from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .params import (  # noqa: F401  (re-exported: the names users import from here)
    GREEDY_BELOW,
    MAX_LOGPROBS,
    MAX_REPETITION_PENALTY,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    MIN_REPETITION_PENALTY,
    SamplingParams,
    TokenLogprob,
)

NEG_INF = float("-inf")


# ---- pure logit transforms --------------------------------------------------------------


def _rows(fn):
    """Let a [B, V] transform also accept a single row [V]."""

    def wrapper(logits: Tensor, *args) -> Tensor:
        if logits.dim() == 1:
            return fn(logits.unsqueeze(0), *args).squeeze(0)
        return fn(logits, *args)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def _col(x, logits: Tensor) -> Tensor | float:
    """A per-row knob as a [B, 1] column (tensors) or a plain number (broadcasts)."""
    if isinstance(x, Tensor):
        return x.to(device=logits.device, dtype=logits.dtype).reshape(-1, 1)
    return x


@_rows
def apply_temperature(logits: Tensor, temperature) -> Tensor:
    """logits / T: T < 1 sharpens, T > 1 flattens. T must be > 0 (0 is greedy, handled by
    the caller). E.g. [2, 1] at T=0.5 → [4, 2]."""
    return logits / _col(temperature, logits)


@_rows
def apply_top_k(logits: Tensor, k) -> Tensor:
    """Keep the k largest logits per row (ties at the k-th value are kept); k=0 keeps all."""
    B, V = logits.shape
    k = torch.as_tensor(k, device=logits.device).reshape(-1).expand(B)
    k = torch.where(k <= 0, V, k.clamp(max=V))  # [B]
    kmax = int(k.max())
    top = torch.topk(logits, kmax, dim=-1).values  # [B, kmax], descending
    kth = top.gather(1, (k - 1).unsqueeze(1))  # [B, 1]
    return logits.masked_fill(logits < kth, NEG_INF)


@_rows
def apply_top_p(logits: Tensor, p) -> Tensor:
    """Nucleus (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probability sums to >= p. A token is dropped when the mass before it already reaches p,
    so the most likely token always survives. p=1 keeps all."""
    p = torch.as_tensor(p, device=logits.device, dtype=torch.float32).reshape(-1, 1)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = (mass_before >= p) & (p < 1.0)  # p=1 rows: float rounding must not drop tails
    drop_sorted[:, 0] = False  # a p that rounds to 0 in float32 (1e-300) still keeps the top token
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


@_rows
def apply_min_p(logits: Tensor, min_p) -> Tensor:
    """Drop tokens whose probability is below min_p × the top token's probability."""
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * _col(min_p, probs)
    return logits.masked_fill(probs < threshold, NEG_INF)


@_rows
def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty) -> Tensor:
    """CTRL (Keskar et al. 2019, eq. 1 as implemented by HF/vLLM): for every token already
    seen, divide a positive logit by the penalty and multiply a negative one by it, so a
    penalty > 1 always makes the token less likely. seen: bool [B, V]."""
    penalty = _col(penalty, logits)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen.reshape(logits.shape), penalised, logits)


@_rows
def apply_frequency_presence_penalties(
    logits: Tensor, counts: Tensor, frequency, presence
) -> Tensor:
    """OpenAI: logit[j] -= counts[j] * frequency + (counts[j] > 0) * presence, where counts
    are how often j occurs in the tokens generated so far (not the prompt). counts [B, V]."""
    counts = counts.reshape(logits.shape).to(logits.dtype)
    freq, pres = _col(frequency, logits), _col(presence, logits)
    return logits - counts * freq - (counts > 0).to(logits.dtype) * pres


def greedy(logits: Tensor) -> Tensor:
    """argmax over the last dim: [B, V] → [B] (or [V] → scalar)."""
    return logits.argmax(dim=-1)


def draw(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token id from probs [V] by inverse-CDF sampling: the first index whose cumulative
    probability exceeds u·total, u ~ U[0, 1) from `generator`. The same distribution as
    torch.multinomial(probs, 1), ~14x faster on CPU at V = 49k (one cumsum and a binary search
    instead of multinomial's general path); never picks a zero-probability token, since
    u·total < total and the search is right-sided.

    >>> draw(torch.tensor([0.0, 1.0, 0.0]), torch.Generator().manual_seed(0)).item()
    1
    """
    cdf = torch.cumsum(probs, dim=0, dtype=torch.float64)
    u = torch.rand((), generator=generator, dtype=torch.float64, device=probs.device) * cdf[-1]
    return torch.searchsorted(cdf, u[None], right=True)[0].clamp(max=probs.shape[0] - 1)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private RNG for one request: seeded if asked, otherwise from OS entropy."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


# ---- log-probs --------------------------------------------------------------------------


def token_logprobs(
    logits: Tensor, token_ids: Sequence[int] | Tensor, k: int, chunk: int = 512
) -> list[TokenLogprob]:
    """log_softmax of raw logits [N, V] in fp32, read at token_ids [N], with the top k of each
    row: one TokenLogprob per row. Rows go `chunk` at a time, so a long prompt's log-probs
    need one [chunk, V] fp32 buffer beside its logits, not a second [N, V] copy."""
    ids = torch.as_tensor(token_ids, device=logits.device).long().reshape(-1, 1)  # [N, 1]
    k = min(k, logits.shape[-1])
    out = []
    for s in range(0, logits.shape[0], chunk):
        lp = torch.log_softmax(logits[s : s + chunk].float(), dim=-1)  # [n, V]
        ids_c = ids[s : s + chunk]
        chosen = lp.gather(1, ids_c)[:, 0].tolist()
        top_v, top_i = lp.topk(k, dim=-1) if k > 0 else (lp[:, :0], ids_c[:, :0])  # [n, k]
        out += [
            TokenLogprob(t, c, list(zip(ti, tv)))
            for t, c, ti, tv in zip(ids_c[:, 0].tolist(), chosen, top_i.tolist(), top_v.tolist())
        ]
    return out


# ---- the batched sampler the engine uses -------------------------------------------------


class Sampler:
    """Per-row sampling state for a batch of `B` slots: knobs as [B] tensors, one generator
    per row, and (only if some row uses penalties) token counts [B, V].

    Rows are filled with `set_row(i, params, prompt_ids)` when a request enters slot i and
    emptied with `clear_row(i)` when it leaves; neither touches another row's state, so a
    continuous-batching scheduler can swap requests in and out of slots. A call samples only
    the rows it is given (`rows`), so only those rows' generators advance.

    >>> s = Sampler(1, vocab_size=4); s.set_row(0, SamplingParams(temperature=0))
    >>> s(torch.tensor([[0.1, 3.0, 0.2, 0.0]])).tolist()
    [1]
    """

    def __init__(self, batch_size: int, vocab_size: int, device: torch.device | str = "cpu"):
        B, self.vocab_size, self.device = batch_size, vocab_size, torch.device(device)
        self.params: list[SamplingParams | None] = [None] * B
        self.generators: list[torch.Generator | None] = [None] * B
        f32 = dict(dtype=torch.float32, device=self.device)
        self.temperature = torch.ones(B, **f32)  # greedy rows hold 1.0 (never divide by 0)
        self.top_k = torch.zeros(B, dtype=torch.long, device=self.device)
        self.top_p = torch.ones(B, **f32)
        self.min_p = torch.zeros(B, **f32)
        self.repetition = torch.ones(B, **f32)
        self.frequency = torch.zeros(B, **f32)
        self.presence = torch.zeros(B, **f32)
        self.counts: Tensor | None = None  # [B, V] int32, generated tokens only
        self.seen: Tensor | None = None  # [B, V] bool, prompt + generated (repetition penalty)
        self._filters = (False, False, False)  # any row using top-k, top-p, min-p

    def set_row(self, i: int, params: SamplingParams, prompt_ids: Sequence[int] = ()) -> None:
        self.params[i] = params
        self.generators[i] = None if params.greedy else make_generator(params.seed, self.device)
        self.temperature[i] = 1.0 if params.greedy else params.temperature
        self.top_k[i] = params.top_k
        self.top_p[i] = params.top_p
        self.min_p[i] = params.min_p
        self.repetition[i] = params.repetition_penalty
        self.frequency[i] = params.frequency_penalty
        self.presence[i] = params.presence_penalty
        if params.uses_penalties and self.counts is None:
            # Rows admitted before use no penalties: their zero counts change nothing.
            B, V = len(self.params), self.vocab_size
            self.counts = torch.zeros(B, V, dtype=torch.int32, device=self.device)
            self.seen = torch.zeros(B, V, dtype=torch.bool, device=self.device)
        if self.counts is not None:
            self.counts[i].zero_()
            self.seen[i].zero_()
            ids = torch.tensor([t for t in prompt_ids if t < self.vocab_size], dtype=torch.long)
            self.seen[i, ids.to(self.device)] = True
        self._update_filters()

    def clear_row(self, i: int) -> None:
        """Forget slot i's request: its row samples greedily with no filters until reused."""
        self.params[i], self.generators[i] = None, None
        self.temperature[i], self.top_k[i], self.top_p[i], self.min_p[i] = 1.0, 0, 1.0, 0.0
        self.repetition[i], self.frequency[i], self.presence[i] = 1.0, 0.0, 0.0
        self._update_filters()

    def _update_filters(self) -> None:
        # Decided once per admission, not per token: skip the sorts nobody asked for. A row
        # that does not filter passes through a filter unchanged (k=0, p=1, min_p=0).
        ps = [p for p in self.params if p is not None]
        self._filters = (
            any(p.top_k > 0 for p in ps),
            any(p.top_p < 1.0 for p in ps),
            any(p.min_p > 0.0 for p in ps),
        )

    def __call__(self, logits: Tensor, rows: Sequence[int] | None = None) -> Tensor:
        """logits [N, V] of slots `rows` (default: all B rows, in order) → next token ids [N]
        (long). Rows never set come out greedy. Every transform is row-wise, so a row's
        token does not depend on which other rows are in the call."""
        rows = list(range(len(self.params))) if rows is None else list(rows)
        r = torch.tensor(rows, dtype=torch.long, device=self.device)
        logits = logits.float()
        if self.counts is not None:
            logits = apply_repetition_penalty(logits, self.seen[r], self.repetition[r])
            logits = apply_frequency_presence_penalties(
                logits, self.counts[r], self.frequency[r], self.presence[r]
            )
        next_ids = greedy(logits)  # [N]
        sampled = [(j, self.generators[i]) for j, i in enumerate(rows) if self.generators[i] is not None]
        if sampled:
            logits = apply_temperature(logits, self.temperature[r])
            use_top_k, use_top_p, use_min_p = self._filters
            if use_top_k:
                logits = apply_top_k(logits, self.top_k[r])
            if use_top_p:
                logits = apply_top_p(logits, self.top_p[r])
            if use_min_p:
                logits = apply_min_p(logits, self.min_p[r])
            probs = torch.softmax(logits, dim=-1)  # [N, V]
            for j, g in sampled:  # one draw per row from its own generator
                next_ids[j] = draw(probs[j], g)
        return next_ids

    def update(self, next_ids: Tensor, rows: Sequence[int] | None = None) -> None:
        """Record the tokens just generated in slots `rows` (for the penalties). next_ids [N]."""
        if self.counts is not None:
            if rows is None:
                rows = range(len(next_ids))
            r = torch.tensor(list(rows), dtype=torch.long, device=self.device)
            self.counts[r, next_ids] += 1
            self.seen[r, next_ids] = True


def sample(
    logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> Tensor:
    """Draw one token per row with the same params for all rows (no penalties state).

    >>> sample(torch.tensor([0.0, 5.0, 1.0]), SamplingParams(temperature=0)).item()
    1
    """
    row = logits.dim() == 1
    logits = logits.reshape(-1, logits.shape[-1]).float()
    if params.greedy:
        out = greedy(logits)
    else:
        logits = apply_top_k(apply_temperature(logits, params.temperature), params.top_k)
        logits = apply_min_p(apply_top_p(logits, params.top_p), params.min_p)
        g = generator if generator is not None else make_generator(params.seed, logits.device)
        probs = torch.softmax(logits, dim=-1)
        out = torch.stack([draw(row_probs, g) for row_probs in probs])
    return out[0] if row else out
