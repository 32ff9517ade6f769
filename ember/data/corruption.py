"""Batches for the encoder-decoder objectives: T5's span corruption and BART's denoising.

Both follow the collator interface of ember.data.objectives: token windows ids (B, T) and a
seeded `torch.Generator` in, a dict of tensors out, pure in (ids, generator state):

- "input_ids" (B, S) and "attention_mask" (B, S) (True = real token): the encoder's side;
- "decoder_input_ids" (B, L): the target shifted right behind `start_id` (teacher forcing);
- "decoder_attention_mask" (B, L) and "labels" (B, L): the target, IGNORE (−100) at pads.

T5 (Raffel et al. 2020 §3.1.4): `random_spans_noise_mask` is the t5 library's algorithm,
line for line: round(L·0.15) noise tokens in round(noise / 3) spans, the mask starts with
kept tokens, and inputs of two tokens or more always keep one token and lose one.
Sentinels are the top of the vocabulary, counting down (`sentinel_ids`), as T5's
<extra_id_0> = V − 1: give the model n extra ids above the tokenizer's.

BART (Lewis et al. 2020 §2.2): text infilling (span lengths ~ Poisson(λ = 3), each span
becomes one mask token, a 0-length span inserts one), sentence permutation and token
deletion; the target is the original text. Deviations from fairseq, flagged: spans never
overlap, so exactly ceil(ratio·T) tokens are masked in exactly as many spans as were drawn
(fairseq's may overlap and merge); no 10% of masks become random tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ember.data.sft import IGNORE

__all__ = ["Denoising", "SpanCorruption", "delete_tokens", "noise_span_counts", "permute_sentences",
           "random_spans_noise_mask", "sentinel_ids", "span_corrupt", "text_infill"]


def sentinel_ids(vocab_size: int, n: int) -> list[int]:
    """T5's sentinels: <extra_id_i> = vocab_size − 1 − i, the top n ids counting down.

    >>> sentinel_ids(32100, 3)
    [32099, 32098, 32097]
    """
    if not 0 < n < vocab_size:
        raise ValueError(f"need 0 < n sentinels < vocab_size {vocab_size}, got {n}")
    return [vocab_size - 1 - i for i in range(n)]


def noise_span_counts(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0):
    """(noise tokens, noise spans) for an input of `length` tokens, exactly as T5 counts them:
    lengths below 2 count as 2, round() halves to even as tf.round does, at least one noise
    token and one kept token, at least one span.

    >>> noise_span_counts(512), noise_span_counts(6), noise_span_counts(2)
    ((77, 26), (1, 1), (1, 1))
    """
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density!r}")
    if not mean_noise_span_length >= 1.0:
        raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length!r}")
    length = max(length, 2)
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    return num_noise, max(round(num_noise / mean_noise_span_length), 1)


def _random_segmentation(num_items: int, num_segments: int, rng: torch.Generator) -> torch.Tensor:
    """Split num_items into num_segments non-empty runs, uniformly: shuffle num_segments − 1
    "a new run starts here" marks among the num_items − 1 gaps (t5's _random_segmentation)."""
    first = torch.zeros(num_items, dtype=torch.long)
    first[1:] = (torch.arange(num_items - 1) < num_segments - 1).long()[torch.randperm(num_items - 1, generator=rng)]
    return torch.bincount(first.cumsum(0), minlength=num_segments)  # (num_segments,) run lengths


def random_spans_noise_mask(length: int, rng: torch.Generator, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> torch.Tensor:
    """(length,) bool, True = noise: kept and noise spans alternate, kept first (t5's
    `random_spans_noise_mask`, random_roll=False). A 1-token input gets no noise, as in T5.

    >>> m = random_spans_noise_mask(20, torch.Generator().manual_seed(0))
    >>> int(m.sum()), bool(m[0])
    (3, False)
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    padded = max(length, 2)
    if padded - num_noise < num_spans:
        raise ValueError(f"{padded - num_noise} kept tokens cannot separate {num_spans} noise spans: "
                         f"noise_density {noise_density} is too high")
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    kept_lengths = _random_segmentation(padded - num_noise, num_spans, rng)
    interleaved = torch.stack([kept_lengths, noise_lengths], dim=1).flatten()  # kept, noise, kept, ...
    is_noise = torch.arange(2 * num_spans).remainder(2).bool()
    return is_noise.repeat_interleave(interleaved)[:length]


def span_corrupt(ids: Sequence[int], noise: Sequence[bool], sentinels: Sequence[int]) -> tuple[list, list]:
    """(inputs, targets): noise span i becomes sentinels[i] in the inputs; the targets are
    sentinels[i] + span i for each span, then one more sentinel when the text ends with kept
    tokens (T5's `nonnoise_span_to_unique_sentinel`; the same as it for masks that start
    with kept tokens, and well defined for masks that do not). `random_spans_noise_mask`
    always ends with noise, so T5's own targets carry no final sentinel: only EOS.

    >>> span_corrupt([10, 11, 12, 13], [False, True, False, False], [99, 98])
    ([10, 99, 12, 13], [99, 11, 98])
    """
    if len(ids) != len(noise):
        raise ValueError(f"{len(ids)} ids but a noise mask of {len(noise)}")
    inputs, targets, k = [], [], 0
    for i, (tok, is_noise) in enumerate(zip(ids, noise)):
        if not is_noise:
            inputs.append(tok)
            continue
        if i == 0 or not noise[i - 1]:  # a span starts: its sentinel, in order
            if k == len(sentinels):
                raise ValueError(f"more noise spans than the {len(sentinels)} sentinels")
            inputs.append(sentinels[k])
            targets.append(sentinels[k])
            k += 1
        targets.append(tok)
    if len(noise) and not noise[-1]:
        if k == len(sentinels):
            raise ValueError(f"more noise spans than the {len(sentinels)} sentinels")
        targets.append(sentinels[k])
    return inputs, targets


def text_infill(ids: Sequence[int], mask_id: int, rng: torch.Generator, mask_ratio: float = 0.3,
                poisson_lambda: float = 3.0) -> tuple[list[int], list[tuple[int, int]]]:
    """BART's text infilling: ceil(mask_ratio·T) tokens in spans of Poisson(λ) lengths (the
    last one trimmed to the budget, as fairseq does), each span → one mask_id, a 0-length
    span inserts one. Returns the noised ids and the spans as (start in ids, length).

    >>> text_infill([1, 2, 3, 4, 5, 6], 0, torch.Generator().manual_seed(0), mask_ratio=0.5)[0]
    [1, 0, 5, 6]
    """
    _check_ratio("mask_ratio", mask_ratio)
    if not poisson_lambda > 0:
        raise ValueError(f"poisson_lambda must be > 0, got {poisson_lambda!r}")
    budget, lengths, total = math.ceil(len(ids) * mask_ratio), [], 0
    while total < budget:  # draw spans until the budget is covered
        for n in torch.poisson(torch.full((budget,), float(poisson_lambda)), generator=rng).long().tolist():
            lengths.append(min(n, budget - total))
            total += lengths[-1]
            if total == budget:
                break
    # each span goes after a uniformly drawn number of the kept tokens, in drawing order
    gaps = torch.randint(0, len(ids) - budget + 1, (len(lengths),), generator=rng).sort().values.tolist()
    out, spans, i, kept = [], [], 0, 0
    for gap, n in zip(gaps, lengths):
        while kept < gap:
            out.append(ids[i])
            i, kept = i + 1, kept + 1
        out.append(mask_id)
        spans.append((i, n))
        i += n
    return out + list(ids[i:]), spans


def permute_sentences(ids: Sequence[int], sentence_end_ids: Sequence[int], rng: torch.Generator) -> list[int]:
    """BART's sentence permutation: split after each sentence-end id, shuffle the sentences.

    >>> permute_sentences([1, 9, 2, 9, 3], [9], torch.Generator().manual_seed(0))
    [3, 1, 9, 2, 9]
    """
    sentences, cur, ends = [], [], set(sentence_end_ids)
    for tok in ids:
        cur.append(tok)
        if tok in ends:
            sentences.append(cur)
            cur = []
    if cur:
        sentences.append(cur)
    order = torch.randperm(len(sentences), generator=rng).tolist()
    return [tok for j in order for tok in sentences[j]]


def delete_tokens(ids: Sequence[int], ratio: float, rng: torch.Generator) -> list[int]:
    """BART's token deletion: each token goes with probability `ratio`; one always stays.

    >>> delete_tokens([1, 2, 3, 4], 0.5, torch.Generator().manual_seed(0))
    [2]
    """
    _check_ratio("delete_ratio", ratio)
    keep = torch.rand(len(ids), generator=rng) >= ratio
    if len(ids) and not keep.any():
        keep[torch.randint(0, len(ids), (1,), generator=rng)] = True
    return [tok for tok, k in zip(ids, keep.tolist()) if k]


@dataclass(frozen=True)
class SpanCorruption:
    """T5's span corruption as a collator. eos_id ends inputs and targets (T5 appends </s>
    to both); start_id begins the decoder input (T5 starts from its pad id, 0).

    >>> c = SpanCorruption(sentinels=(99, 98, 97), eos_id=1, pad_id=0, start_id=0)
    >>> c(torch.arange(10, 30)[None], torch.Generator().manual_seed(0))["labels"].tolist()
    [[99, 27, 28, 29, 1]]
    """

    sentinels: tuple[int, ...]
    eos_id: int | None = None
    pad_id: int = 0
    start_id: int = 0
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    def __post_init__(self):
        noise_span_counts(2, self.noise_density, self.mean_noise_span_length)  # validates both
        if not self.sentinels:
            raise ValueError("span corruption needs at least one sentinel id")

    def __call__(self, ids: torch.Tensor, rng: torch.Generator) -> dict[str, torch.Tensor]:
        rows = []
        for row in ids.tolist():
            noise = random_spans_noise_mask(len(row), rng, self.noise_density, self.mean_noise_span_length)
            src, tgt = span_corrupt(row, noise.tolist(), self.sentinels)
            rows.append(_with_eos(src, tgt, self.eos_id))
        return seq2seq_batch(rows, self.pad_id, self.start_id)


@dataclass(frozen=True)
class Denoising:
    """BART's denoising as a collator: sentence permutation (when sentence_end_ids are given),
    text infilling (mask_ratio > 0), token deletion (delete_ratio > 0); the target is the
    original row. BART's recipe is infilling 30% plus permutation, the defaults here.

    >>> d = Denoising(mask_id=2, eos_id=1, mask_ratio=0.5)
    >>> d(torch.arange(10, 16)[None], torch.Generator().manual_seed(0))["input_ids"].tolist()
    [[10, 2, 14, 15, 1]]
    """

    mask_id: int
    eos_id: int | None = None
    pad_id: int = 0
    start_id: int = 0
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    sentence_end_ids: tuple[int, ...] = ()
    delete_ratio: float = 0.0

    def __post_init__(self):
        _check_ratio("mask_ratio", self.mask_ratio)
        _check_ratio("delete_ratio", self.delete_ratio)
        if not self.poisson_lambda > 0:
            raise ValueError(f"poisson_lambda must be > 0, got {self.poisson_lambda!r}")

    def __call__(self, ids: torch.Tensor, rng: torch.Generator) -> dict[str, torch.Tensor]:
        rows = []
        for row in ids.tolist():
            src = permute_sentences(row, self.sentence_end_ids, rng) if self.sentence_end_ids else row
            if self.mask_ratio > 0:
                src = text_infill(src, self.mask_id, rng, self.mask_ratio, self.poisson_lambda)[0]
            if self.delete_ratio > 0:
                src = delete_tokens(src, self.delete_ratio, rng)
            rows.append(_with_eos(src, row, self.eos_id))
        return seq2seq_batch(rows, self.pad_id, self.start_id)


def seq2seq_batch(rows: list[tuple[list[int], list[int]]], pad_id: int, start_id: int) -> dict[str, torch.Tensor]:
    """(source, target) id lists → the padded tensors an EncoderDecoder trains on.

    >>> b = seq2seq_batch([([5, 6], [7]), ([5], [7, 8])], pad_id=0, start_id=0)
    >>> b["decoder_input_ids"].tolist(), b["labels"].tolist()
    ([[0, 0], [0, 7]], [[7, -100], [7, 8]])
    """
    S, L = max(len(s) for s, _ in rows), max(len(t) for _, t in rows)
    src = torch.full((len(rows), S), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), L), IGNORE, dtype=torch.long)
    dec = torch.full((len(rows), L), pad_id, dtype=torch.long)
    for b, (s, t) in enumerate(rows):
        src[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        labels[b, : len(t)] = torch.tensor(t, dtype=torch.long)
        dec[b, : len(t)] = torch.tensor([start_id, *t[:-1]], dtype=torch.long)  # shifted right
    lengths = torch.tensor([len(s) for s, _ in rows])
    return {"input_ids": src, "attention_mask": torch.arange(S) < lengths[:, None], "decoder_input_ids": dec,
            "decoder_attention_mask": labels != IGNORE, "labels": labels}


def _with_eos(src: list[int], tgt: list[int], eos_id: int | None) -> tuple[list[int], list[int]]:
    return (src, list(tgt)) if eos_id is None else ([*src, eos_id], [*tgt, eos_id])


def _check_ratio(name: str, v: float) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
