"""Retrieval quality on labelled questions: recall@k, MRR and nDCG@10 per search mode, and
the convex fusion weight tuned on a split.

A question file is JSON Lines, one object per line:
`{"question": str, "relevant": [str, ...], "split": "dev" | "test"}` (split optional).
How a relevant item names a document, and how chunk results become a document ranking,
is defined in `ember.rag.metrics`. Each question is searched once per mode for `depth`
chunks; their documents, deduplicated in order, are the ranking the metrics read
(recall@k: the first k documents; MRR and nDCG: the first 10).

The bundled set, `pydoc_qa.jsonl` (`bundled_qa()`), asks 79 questions about Python's
pydoc topics (one document per topic, see ember.rag.pydoc_corpus) in a user's words;
27 are marked "dev" (every third), the rest "test".

    >>> rows = load_qa(bundled_qa())
    >>> len(rows), rows[0]["relevant"]
    (79, ['break'])
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ember.rag.metrics import dedupe, ndcg_at_k, recall_at_k, reciprocal_rank

EVAL_MODES = ("bm25", "dense", "hybrid", "hybrid+rerank")
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def bundled_qa() -> Path:
    return Path(__file__).parent / "data" / "pydoc_qa.jsonl"


def load_qa(path, split: str | None = None) -> list[dict]:
    """The rows of a question file (module docstring), only those of `split` if given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such question file: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        _check_row(row, f"{path}:{n}")
        if split is None or row.get("split") == split:
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no questions" + (f" in split {split!r}" if split else ""))
    return rows


def _check_row(row, where: str) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
        raise ValueError(f"{where}: a row needs a non-empty string 'question'")
    rel = row.get("relevant")
    if not isinstance(rel, list) or not rel or not all(isinstance(r, str) and r for r in rel):
        raise ValueError(f"{where}: 'relevant' must be a non-empty list of document names, got {rel!r}")


def scores(rankings: list[list[str]], rows: list[dict], k: int = 5) -> dict:
    """Mean recall@k, MRR (first 10) and nDCG@10 of document rankings, one per row.

    >>> scores([["a", "x"], ["x", "y"]], [{"relevant": ["a"]}, {"relevant": ["y"]}], k=1)
    {'recall@1': 0.5, 'mrr': 0.75, 'ndcg@10': 0.8155}
    """
    n = len(rows)
    out = {
        f"recall@{k}": sum(recall_at_k(d, r["relevant"], k) for d, r in zip(rankings, rows)) / n,
        "mrr": sum(reciprocal_rank(d, r["relevant"], 10) for d, r in zip(rankings, rows)) / n,
        "ndcg@10": sum(ndcg_at_k(d, r["relevant"], 10) for d, r in zip(rankings, rows)) / n,
    }
    return {key: round(v, 4) for key, v in out.items()}


def rank_documents(index, rows: list[dict], depth: int = 30, progress: bool = False, **search_kw) -> tuple[list, float]:
    """(per row: its document ranking, queries per second) for one search setting."""
    from ember.rag.search import search

    rankings, t0 = [], time.perf_counter()
    for row in _bar(rows, progress, search_kw.get("mode", "hybrid")):
        hits = search(index, row["question"], depth, **search_kw)
        rankings.append(dedupe([h.chunk.doc for h in hits]))
    return rankings, len(rows) / max(time.perf_counter() - t0, 1e-9)


def evaluate(index, rows: list[dict], modes=EVAL_MODES, k: int = 5, reranker=None, depth: int = 30,
             progress: bool = False, **search_kw) -> dict:
    """{mode: {"recall@k", "mrr", "ndcg@10", "queries_per_s"}} for each mode of EVAL_MODES
    asked; "hybrid+rerank" needs a reranker (an ember.rag.rerank.Reranker)."""
    unknown = [m for m in modes if m not in EVAL_MODES]
    if unknown:
        raise ValueError(f"unknown eval mode {unknown[0]!r}; modes: {', '.join(EVAL_MODES)}")
    out = {}
    for mode in modes:
        kw = dict(search_kw, mode=mode.split("+")[0])
        if mode == "hybrid+rerank":
            if reranker is None:
                raise ValueError("mode hybrid+rerank needs a reranker")
            kw["reranker"] = reranker
        rankings, qps = rank_documents(index, rows, depth, progress, **kw)
        out[mode] = {**scores(rankings, rows, k), "queries_per_s": round(qps, 2)}
    return out


def tune_weight(index, rows: list[dict], grid=WEIGHT_GRID, metric: str = "ndcg@10", depth: int = 30,
                candidates: int = 50) -> tuple[float, dict]:
    """The convex fusion weight (dense share) with the best mean `metric` on `rows`, and
    the metric at every weight of the grid. Each question's two lists are read once; ties
    go to the weight nearest 0.5."""
    import numpy as np

    from ember.rag.search import convex

    lists = []
    for row in rows:
        vector, _ = index.embed_query(row["question"])
        lists.append((index.store.dense(np.asarray(vector, dtype=np.float32), candidates, None),
                      index.store.bm25(row["question"], candidates, None)))
    ids = sorted({i for d, b in lists for i, _ in d + b})
    doc_of = {c.id: c.doc for c in index.store.chunks(ids)}
    table = {}
    for w in grid:
        rankings = [dedupe([doc_of[i] for i, _ in convex(d, b, w)[:depth]]) for d, b in lists]
        table[w] = scores(rankings, rows)[metric]
    best = max(table, key=lambda w: (table[w], -abs(w - 0.5)))
    return best, table


def _bar(rows, progress: bool, desc: str):
    if not progress:
        return rows
    from tqdm import tqdm

    return tqdm(rows, desc=desc, unit="q", leave=False)
