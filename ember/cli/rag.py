"""`ember rag search`, `ember rag ask` and `ember rag eval`: search an index, answer from it
with cited sources, and measure retrieval on labelled questions."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from ember.cli.errors import at_least
from ember.cli.infer import ModelOptions, _load


@dataclass
class SearchOptions:
    """Where and how to search; shared by the rag commands."""

    db: str | None = None
    """the RAG store to search (a SQLite file made by `ember rag index`)"""
    k: int = 5
    """how many chunks to return"""
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"
    """hybrid fuses BM25 and dense search; bm25 and dense use one list alone"""
    fusion: Literal["rrf", "convex"] = "convex"
    """hybrid's fusion: convex (weight · dense + (1 − weight) · BM25, min-max normalised scores)
    or rrf (reciprocal rank fusion, no weight)"""
    weight: float = 0.7
    """convex fusion's share of the dense score (0.7 was best on the dev split of the bundled
    pydoc questions; `ember rag eval --tune` tunes it on your own)"""
    mmr: float | None = None
    """diversify the results with maximal marginal relevance at this lambda (1: relevance
    only, 0: diversity only); default off"""
    rerank: bool = False
    """rescore the first --rerank-top candidates with the chat model's yes/no judgement"""
    rerank_top: int = 20
    """candidates the reranker rescores"""
    doc_prefix: str | None = None
    """only search documents whose path starts with this"""

    def __post_init__(self):
        at_least("--k", self.k, 1)
        at_least("--rerank-top", self.rerank_top, 1)
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"--weight must be in [0, 1], got {self.weight}")
        if self.mmr is not None and not 0.0 <= self.mmr <= 1.0:
            raise ValueError(f"--mmr must be in [0, 1], got {self.mmr}")

    def search_kw(self) -> dict:
        return {"mode": self.mode, "fusion": self.fusion, "weight": self.weight, "mmr_lambda": self.mmr,
                "rerank_top": self.rerank_top, "where": {"doc_prefix": self.doc_prefix} if self.doc_prefix else None}


def open_index(db: str | None):
    """An existing store for searching; its chunk settings and model come from the store."""
    from pathlib import Path

    from ember.rag.index import Index

    if not db:
        raise ValueError("give --db: the RAG store made by `ember rag index`")
    if not Path(db).is_file():
        raise FileNotFoundError(f"no such RAG store: {db} (make one with `ember rag index --db {db} --input ...`)")
    return Index(db, create=False)


def _reranker(opts: ModelOptions, model=None, tok=None):
    from ember.rag.rerank import Reranker

    if model is None:
        model, tok = _load(opts)
    return Reranker(model, tok)


@dataclass
class RagSearchConfig(SearchOptions, ModelOptions):
    """Search a RAG store: the k best chunks for a query (--model serves --rerank only)."""

    query: str | None = None
    """what to search for (also the bare words after `ember rag search`)"""
    json: bool = False
    """print {"results": [{"doc", "chunk", "score", "text"}, ...]} best first, as one JSON line"""

    def __post_init__(self):
        ModelOptions.__post_init__(self)
        SearchOptions.__post_init__(self)


def search(cfg: RagSearchConfig) -> list[dict]:
    if not cfg.query or not cfg.query.strip():
        raise ValueError("give a query: ember rag search --db F \"your question\"")
    with open_index(cfg.db) as index:
        reranker = _reranker(cfg) if cfg.rerank else None
        hits = index.search(cfg.query, cfg.k, reranker=reranker, **cfg.search_kw())
    if hits.note:
        print(f"note: {hits.note}", file=sys.stderr)
    results = [{"doc": h.chunk.doc, "chunk": h.chunk.id, "score": round(h.score, 6), "text": h.chunk.text}
               for h in hits]
    if cfg.json:
        print(json.dumps({"results": results}, ensure_ascii=False))
        return results
    if not results:
        print("no results", file=sys.stderr)
    for n, (r, h) in enumerate(zip(results, hits), 1):
        ranks = ", ".join(f"{k} #{v}" for k, v in h.ranks.items())
        print(f"{n}. {r['doc']}  (chunk {r['chunk']}, score {r['score']:.4f}; {ranks})")
        print("   " + " ".join(r["text"].split())[:300])
    return results


@dataclass
class RagAskConfig(SearchOptions, ModelOptions):
    """Answer a question from a RAG store: retrieve, prompt with numbered sources, stream an
    answer that cites them as [n]; citations of sources not given are flagged."""

    question: str | None = None
    """the question (also the bare words after `ember rag ask`)"""
    max_tokens: int = 256
    """most tokens in the answer"""
    temperature: float = 0.0
    """sampling temperature; 0 is greedy"""
    seed: int | None = None
    """seed for sampling"""
    ctx: int = 2048
    """context for the prompt and the answer (capped at the model's); sources that do not fit are left out"""
    json: bool = False
    """print {"answer", "citations", "invalid_citations", "sources", "notes"} as one JSON line"""

    def __post_init__(self):
        ModelOptions.__post_init__(self)
        SearchOptions.__post_init__(self)
        at_least("--max-tokens", self.max_tokens, 1)
        at_least("--ctx", self.ctx, 16)


def ask(cfg: RagAskConfig) -> dict:
    from ember.infer.engine import Engine
    from ember.infer.sampling import SamplingParams
    from ember.rag.answer import answer

    if not cfg.question or not cfg.question.strip():
        raise ValueError("give a question: ember rag ask --db F \"your question\"")
    params = SamplingParams(temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed)
    with open_index(cfg.db) as index:
        model, tok = _load(cfg)
        engine = Engine(model, tok, max_batch_size=1, max_seq_len=min(cfg.ctx, model.config.max_seq_len))
        reranker = _reranker(cfg, model, tok) if cfg.rerank else None
        stream = None if cfg.json else (lambda text: print(text, end="", flush=True))
        ans = answer(cfg.question, index, engine, cfg.k, params, on_text=stream, reranker=reranker,
                     **cfg.search_kw())
    out = ans.as_dict()
    if cfg.json:
        print(json.dumps(out, ensure_ascii=False))
        return out
    print("\n\nsources:")
    for s in ans.sources:
        mark = "*" if s.n in ans.citations else " "
        print(f" {mark}[{s.n}] {s.doc} (chunk {s.chunk}, score {s.score:.4f})")
    for note in ans.notes:
        print(f"note: {note}", file=sys.stderr)
    if ans.invalid_citations:
        bad = ", ".join(f"[{n}]" for n in ans.invalid_citations)
        print(f"warning: the answer cites {bad}, which name no source given ({len(ans.sources)} sources)",
              file=sys.stderr)
    return out


@dataclass
class RagEvalConfig(ModelOptions):
    """Retrieval quality on labelled questions: recall@k, MRR and nDCG@10 per search mode
    (documents deduplicated, binary relevance; see ember.rag.metrics for how a relevant
    name matches a document path). --model is the reranker of hybrid+rerank."""

    db: str | None = None
    """the RAG store to search"""
    data: str | None = None
    """JSONL of {"question", "relevant": [document names], "split"?}; default: the bundled
    pydoc questions (index `ember rag pydoc` output to use them)"""
    k: int = 5
    """the k of recall@k"""
    modes: list[str] = field(default_factory=lambda: ["bm25", "dense", "hybrid", "hybrid+rerank"])
    """modes to measure: bm25, dense, hybrid, hybrid+rerank"""
    split: str | None = None
    """only the questions of this split (e.g. test)"""
    fusion: Literal["rrf", "convex"] = "convex"
    """hybrid's fusion"""
    weight: float = 0.7
    """convex fusion's dense share"""
    tune: bool = False
    """tune the convex weight on the dev split, then report on the other questions"""
    rerank_top: int = 20
    """candidates the reranker rescores"""
    json: bool = False
    """print {mode: {"recall@k", "mrr", "ndcg@10", "queries_per_s"}} as one JSON line"""

    def __post_init__(self):
        super().__post_init__()
        at_least("--k", self.k, 1)
        at_least("--rerank-top", self.rerank_top, 1)
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"--weight must be in [0, 1], got {self.weight}")


def evaluate(cfg: RagEvalConfig) -> dict:
    from ember.rag.evaluate import EVAL_MODES, bundled_qa, load_qa, tune_weight
    from ember.rag.evaluate import evaluate as run

    bad = [m for m in cfg.modes if m not in EVAL_MODES]
    if bad or not cfg.modes:
        raise ValueError(f"--modes: unknown mode {bad[0] if bad else '(none)'!r}; modes: {', '.join(EVAL_MODES)}")
    data = cfg.data or bundled_qa()
    rows, weight, tuned = load_qa(data, cfg.split), cfg.weight, None
    with open_index(cfg.db) as index:
        if cfg.tune:
            weight, table = tune_weight(index, load_qa(data, "dev"))
            rows = [r for r in rows if r.get("split") != "dev"]
            if not rows:
                raise ValueError(f"{data}: no questions outside the dev split to report on")
            tuned = {"weight": weight, "dev_ndcg@10": table}
        reranker = _reranker(cfg) if "hybrid+rerank" in cfg.modes else None
        table = run(index, rows, cfg.modes, cfg.k, reranker, fusion=cfg.fusion, weight=weight,
                    rerank_top=cfg.rerank_top, progress=not cfg.json)
    out = {"questions": len(rows), "fusion": cfg.fusion, "weight": weight, "modes": table}
    if tuned:
        out["tuned"] = tuned
    if cfg.json:
        print(json.dumps(out))
        return out
    print(f"{len(rows)} questions; hybrid: {cfg.fusion}" + (f" (weight {weight})" if cfg.fusion == "convex" else ""))
    keys = [f"recall@{cfg.k}", "mrr", "ndcg@10", "queries_per_s"]
    print(f"{'mode':<15}" + "".join(f"{k:>15}" for k in keys))
    for mode, m in table.items():
        print(f"{mode:<15}" + "".join(f"{m[k]:>15}" for k in keys))
    return out
