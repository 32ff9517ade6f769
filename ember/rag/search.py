"""Search an index: BM25, exact dense search, their fusion, reranking and MMR.

    question ─┬─ store.bm25 (FTS5) ───────────┐
              └─ embed → store.dense (cosine) ─┴─ fuse (RRF or convex) → rerank? → MMR? → top k

- **bm25**: SQLite FTS5's BM25 over the chunk texts.
- **dense**: the exact cosine over every normalised chunk vector.
- **hybrid**: both lists, `candidates` deep each, fused. Reciprocal rank fusion (Cormack,
  Clarke & Büttcher, 2009) sums 1 / (60 + rank) over the lists a chunk is in: it needs no
  score calibration. The convex combination min-max normalises each list's scores to
  [0, 1] and takes `weight * dense + (1 - weight) * bm25` (a chunk missing from a list gets
  0 there); its weight is tuned on labelled questions (`ember.rag.evaluate.tune_weight`).
- **rerank**: a `Reranker` rescores the first `rerank_top` fused candidates; they are then
  ordered by its score (the rest keep their order behind them).
- **mmr**: maximal marginal relevance (Carbonell & Goldstein, 1998) picks the k results
  one by one, each maximising `λ · relevance − (1 − λ) · max cosine to those picked`, with
  relevance the fused score min-max normalised to [0, 1].

    >>> hits = search(index, "how do I leave a loop early?", k=5)   # doctest: +SKIP
    >>> hits[0].chunk.doc, round(hits[0].score, 4), hits[0].ranks  # doctest: +SKIP
    ('pydoc/for.txt', 0.9115, {'bm25': 2, 'dense': 2})
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MODES = ("hybrid", "bm25", "dense")
FUSIONS = ("rrf", "convex")
RRF_K = 60  # the constant of Cormack et al.; it damps the weight of the very first ranks
# Convex fusion's share of the dense score: the best nDCG@10 (and recall@5) on the 27 dev
# questions of the bundled pydoc set (ember.rag.evaluate.tune_weight over 0, 0.1, ..., 1),
# chunks embedded under their headings and question words left out of BM25. Convex fusion
# at this weight measured better than RRF there and on the 52 test questions (bench/rag.py).
DEFAULT_WEIGHT = 0.7
DEFAULT_FUSION = "convex"


@dataclass
class Hit:
    """One retrieved chunk: its score in the final order (higher is better) and its 1-based
    rank in each list that found it ("bm25", "dense", "rerank")."""

    chunk: object  # ember.rag.store.Chunk
    score: float
    ranks: dict = field(default_factory=dict)


class Hits(list):
    """The hits best first, and a note for the user (the query was cut to the encoder's
    limit), or None."""

    def __init__(self, hits=(), note: str | None = None):
        super().__init__(hits)
        self.note = note


def rrf(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of id lists (each best first): score(id) = Σ 1 / (k + rank).
    Ties keep the order of first appearance.

    >>> [(i, round(s, 6)) for i, s in rrf([[1, 2, 3], [3, 1]], k=60)]  # 1/61+1/62, 1/63+1/61, 1/62
    [(1, 0.032522), (3, 0.032266), (2, 0.016129)]
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for r, i in enumerate(ranking, start=1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (k + r)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def minmax(scores: list[float]) -> list[float]:
    """Scores scaled to [0, 1]; all equal → all 1.

    >>> minmax([2.0, 4.0, 3.0])
    [0.0, 1.0, 0.5]
    """
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    return [1.0] * len(scores) if hi == lo else [(s - lo) / (hi - lo) for s in scores]


def convex(dense: list[tuple[int, float]], bm25: list[tuple[int, float]], weight: float) -> list[tuple[int, float]]:
    """weight · minmax(dense) + (1 − weight) · minmax(bm25); a chunk absent from a list gets
    0 from it.

    >>> convex([(1, 0.9), (2, 0.5)], [(2, 10.0), (3, 4.0)], weight=0.25)
    [(2, 0.75), (1, 0.25), (3, 0.0)]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the convex fusion weight must be in [0, 1], got {weight}")
    scores: dict[int, float] = {}
    for lst, w in ((dense, weight), (bm25, 1.0 - weight)):
        for (i, _), s in zip(lst, minmax([s for _, s in lst])):
            scores[i] = scores.get(i, 0.0) + w * s
    return sorted(scores.items(), key=lambda kv: -kv[1])


def mmr(relevance: list[float], vectors: np.ndarray, k: int, lam: float = 0.7) -> list[int]:
    """Maximal marginal relevance: indices of k items, each maximising
    lam · relevance − (1 − lam) · (max cosine to the items already picked).
    `vectors` (N, D) are unit rows; relevance should be on the cosine's scale ([0, 1]).

    >>> v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> mmr([1.0, 0.9, 0.5], v, k=2, lam=0.5)  # 1 duplicates 0: 0.45 - 0.5 < 0.25 - 0
    [0, 2]
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"the MMR lambda must be in [0, 1], got {lam}")
    rel = np.asarray(relevance, dtype=np.float64)
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T  # (N, N)
    picked: list[int] = []
    left = list(range(len(rel)))
    while left and len(picked) < k:
        penalty = sims[np.ix_(left, picked)].max(axis=1) if picked else np.zeros(len(left))
        gain = lam * rel[left] - (1.0 - lam) * penalty
        picked.append(left.pop(int(np.argmax(gain))))
    return picked


def search(index, query: str, k: int = 5, mode: str = "hybrid", where: dict | None = None, reranker=None,
           mmr_lambda: float | None = None, fusion: str = DEFAULT_FUSION, weight: float = DEFAULT_WEIGHT,
           candidates: int = 50, rerank_top: int = 20) -> Hits:
    """The k best chunks of `index` (an ember.rag.index.Index) for `query`, best first.

    mode: hybrid, bm25 or dense. where: metadata filter passed to the store. reranker: an
    ember.rag.rerank.Reranker (None: no reranking). mmr_lambda: diversify with MMR
    (None: off). fusion: convex (default) or rrf (hybrid only), weight: convex's dense share.
    candidates: how deep each list is read. rerank_top: how many fused candidates the
    reranker rescores.
    """
    _check_args(query, k, mode, fusion, candidates, rerank_top)
    depth = max(candidates, k, rerank_top if reranker is not None else 0)
    note, lists = None, {}
    if mode in ("bm25", "hybrid"):
        lists["bm25"] = index.store.bm25(query, depth, where)
    if mode in ("dense", "hybrid"):
        vector, note = index.embed_query(query)
        lists["dense"] = index.store.dense(np.asarray(vector, dtype=np.float32), depth, where)
    if mode == "hybrid" and fusion == "rrf":
        fused = rrf([[i for i, _ in lst] for lst in lists.values()])
    elif mode == "hybrid":
        fused = convex(lists["dense"], lists["bm25"], weight)
    else:
        fused = list(lists[mode])
    ranks = {name: {i: r for r, (i, _) in enumerate(lst, start=1)} for name, lst in lists.items()}
    if reranker is not None and fused:
        fused = _rerank(index, query, fused, reranker, rerank_top, ranks)
    if mmr_lambda is not None and len(fused) > k:
        fused = _diversify(index, fused, k, mmr_lambda)
    fused = fused[:k]
    chunks = {c.id: c for c in index.store.chunks([i for i, _ in fused])}
    hits = [Hit(chunks[i], float(s), {name: r[i] for name, r in ranks.items() if i in r}) for i, s in fused]
    return Hits(hits, note)


def _check_args(query, k, mode, fusion, candidates, rerank_top) -> None:
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"the query is empty: {query!r}")
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}; modes: {', '.join(MODES)}")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; fusions: {', '.join(FUSIONS)}")
    for name, v in (("k", k), ("candidates", candidates), ("rerank_top", rerank_top)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


def _rerank(index, query, fused, reranker, top: int, ranks: dict) -> list[tuple[int, float]]:
    """The first `top` candidates ordered by the reranker's score; the rest after them,
    their scores shifted below the lowest reranked one so the list stays sorted."""
    head, tail = fused[:top], fused[top:]
    texts = [c.text for c in index.store.chunks([i for i, _ in head])]
    scores = reranker.score(query, texts)
    head = sorted(zip([i for i, _ in head], scores), key=lambda kv: -kv[1])
    ranks["rerank"] = {i: r for r, (i, _) in enumerate(head, start=1)}
    floor = min(s for _, s in head)
    return head + [(i, floor - 1.0 - r) for r, (i, _) in enumerate(tail)]


def _diversify(index, fused, k: int, lam: float) -> list[tuple[int, float]]:
    ids = [i for i, _ in fused]
    vectors = np.asarray(index.store.vectors(ids), dtype=np.float64)
    order = mmr(minmax([s for _, s in fused]), vectors, k, lam)
    return [fused[j] for j in order]
