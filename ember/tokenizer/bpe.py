"""Byte-level BPE training with incremental pair counts (Sennrich et al. 2016; GPT-2 bytes).

1. Split the corpus with the pre-tokenization regex and count each distinct chunk once.
2. Count adjacent pairs over the distinct chunks, weighted by how often each chunk occurs.
3. Repeatedly merge the most frequent pair. Only chunks that contain it are rewritten, and
   only their pair counts change; a heap with lazy deletion finds the next best pair.

Tie-break (deterministic, independent of corpus order): among pairs of equal count, the one
whose merged bytes are lexicographically smallest wins; if two pairs make the same bytes, the
one with the shorter left part wins. On "low lower lowest lowly" (whitespace-split words)
this gives lo, low, lowe, lower, lowes, lowest, lowl, lowly.
"""

from __future__ import annotations

import heapq
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import regex

from .patterns import resolve_pattern, safe_split_points
from .tokenizer import Tokenizer

_PARALLEL_MIN_CHARS = 2_000_000


def _count_chunks(args: tuple[str, str]) -> Counter:
    text, pattern = args
    return Counter(regex.findall(pattern, text))


def count_chunks(
    texts: Iterable[str], pattern: str, special_tokens: Sequence[str] = (), n_procs: int | None = None
) -> Counter:
    """Distinct pre-tokenization chunks and their counts (special-token strings removed).

    >>> count_chunks(["low low"], "gpt2")
    Counter({'low': 1, ' low': 1})
    """
    pattern = resolve_pattern(pattern)
    specials = regex.compile("|".join(regex.escape(s) for s in special_tokens)) if special_tokens else None
    pieces: list[str] = []
    for text in texts:
        pieces.extend(specials.split(text) if specials else [text])
    total = sum(len(p) for p in pieces)
    n_procs = n_procs or os.cpu_count() or 1
    counts: Counter = Counter()
    if n_procs == 1 or total < _PARALLEL_MIN_CHARS:
        for p in pieces:
            counts.update(regex.findall(pattern, p))
        return counts
    # Cut big texts where the regex cannot straddle, so parallel counts equal serial ones.
    jobs = []
    for p in pieces:
        cuts = safe_split_points(p, max(1, len(p) * n_procs * 4 // total))
        jobs.extend((p[i:j], pattern) for i, j in zip(cuts, cuts[1:]))
    from multiprocessing import get_context

    with get_context("fork" if os.name == "posix" else "spawn").Pool(n_procs) as pool:
        for c in pool.imap_unordered(_count_chunks, jobs):
            counts.update(c)
    return counts


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str = "gpt4",
    special_tokens: Sequence[str] = (),
    progress: bool = False,
    n_procs: int | None = None,
    **tokenizer_kwargs,
) -> Tokenizer:
    """Learn merges until the vocabulary (256 bytes + merges + specials) reaches `vocab_size`.

    >>> tok = train_bpe(["low lower lowest lowly"], vocab_size=256 + 3, pattern=r"\\S+|\\s+")
    >>> [tok.vocab[m[2]] for m in tok.merges]
    [b'lo', b'low', b'lowe']
    """
    special_tokens = list(dict.fromkeys(special_tokens))
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than 256 byte tokens + {len(special_tokens)} special tokens"
        )
    pattern = resolve_pattern(pattern)
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise ValueError("the training corpus is empty (no non-whitespace text to learn merges from)")
    chunk_counts = count_chunks(texts, pattern, special_tokens, n_procs)

    words: list[list[int]] = [list(w.encode("utf-8")) for w in chunk_counts]
    freqs: list[int] = list(chunk_counts.values())
    merges = _learn_merges(words, freqs, n_merges, progress)
    if len(merges) < n_merges:
        warnings.warn(
            f"the corpus supports only {len(merges)} merges, fewer than the {n_merges} that "
            f"vocab_size {vocab_size} asks for; the vocabulary is smaller",
            stacklevel=2,
        )
    specials = {s: 256 + len(merges) + k for k, s in enumerate(special_tokens)}
    return Tokenizer(merges=merges, pattern=pattern, special_tokens=specials, **tokenizer_kwargs)


def _learn_merges(words: list[list[int]], freqs: list[int], n_merges: int, progress: bool):
    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    stats: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            stats[p] += f
            where[p].add(wi)

    def key(p):  # heap order: count desc, then merged bytes asc, then left part shorter
        left = vocab[p[0]]
        return (-stats[p], left + vocab[p[1]], len(left), p)

    heap = [key(p) for p in stats]
    heapq.heapify(heap)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_merges, desc="bpe merges", unit="merge")
    merges: list[tuple[int, int, int]] = []
    while len(merges) < n_merges and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if -neg != stats.get(pair, 0) or neg == 0:
            continue  # stale entry: this pair's count changed since it was pushed
        a, b = pair
        new_id = len(vocab)
        vocab.append(vocab[a] + vocab[b])
        merges.append((a, b, new_id))
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for wi in where.pop(pair):
            w = words[wi]
            f = freqs[wi]
            out, i, n, hit = [], 0, len(w), False
            while i < n:
                if i + 1 < n and w[i] == a and w[i + 1] == b:
                    out.append(new_id)
                    i += 2
                    hit = True
                else:
                    out.append(w[i])
                    i += 1
            if not hit:  # the word lost this pair to an earlier merge (lazy `where`)
                continue
            for p in zip(w, w[1:]):
                delta[p] -= f
            for p in zip(out, out[1:]):
                delta[p] += f
                where[p].add(wi)
            words[wi] = out
        del stats[pair]
        for p, d in delta.items():
            if d == 0 or p == pair:
                continue
            c = stats[p] + d
            if c > 0:
                stats[p] = c
                heapq.heappush(heap, key(p))
            else:
                stats.pop(p, None)
                where.pop(p, None)
        if bar is not None and len(merges) % 64 == 0:
            bar.update(64)
    if bar is not None:
        bar.update(len(merges) - bar.n)
        bar.close()
    return merges
