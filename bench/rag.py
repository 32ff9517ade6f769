"""Retrieval on Python's pydoc topics: ember's search modes against bm25s (BM25, Lucene
variant, k1=1.2, b=0.75) and sentence-transformers + numpy (all-MiniLM-L6-v2, exact
cosine) over the SAME chunks, on the bundled labelled questions, in one run.

    .venv/bin/python bench/rag.py [--threads 1] [--rerank] [--db pydoc.db]

Steps: write the 79 topics as files, index them with ember (timed), read every chunk back
from the store, index those chunk texts with bm25s and with sentence-transformers (timed),
then run every question through each system. ember embeds each chunk under its heading
path (`Index(headers=True)`, the default); the references embed and index the chunk text
alone, as they would out of the box. The convex fusion weight is tuned on the
"dev" split only; the table reports the "test" split (52 questions never used for
tuning) and then all 79. Metrics are at document level (ember.rag.metrics): each system
returns 30 chunks, deduplicated to documents. --rerank adds hybrid+rerank (SmolLM2's
yes/no log-odds over the first 20 candidates; minutes on a CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ember.rag.evaluate import bundled_qa, evaluate, load_qa, scores, tune_weight
from ember.rag.metrics import dedupe

DEPTH = 30  # chunks per question, before deduplicating to documents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="reuse this store if it exists (else build it there; default: a temp file)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--rerank", action="store_true", help="also measure hybrid+rerank with SmolLM2")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="ember-bench-rag-"))
    db = Path(args.db) if args.db else tmp / "pydoc.db"
    index, index_s = build_index(db, tmp / "pydoc")
    ids, texts, docs = all_chunks(index.store)
    print(f"{len(texts)} chunks in {len(set(docs))} documents", file=sys.stderr)
    dev, test, rows = (load_qa(bundled_qa(), s) for s in ("dev", "test", None))
    weight, table = tune_weight(index, dev)
    print(f"convex weight tuned on {len(dev)} dev questions (nDCG@10 per weight): {table} -> {weight}",
          file=sys.stderr)
    bm25s_run, bm25s_s = bm25s_system(texts, docs)
    st_run, st_s = st_system(texts, docs)
    reranker = load_reranker() if args.rerank else None
    results = {}
    for name, split in (("test", test), ("all", rows)):
        res = {"bm25s (Lucene)": bm25s_run(split), "sentence-transformers": st_run(split)}
        modes = ("bm25", "dense", "hybrid") + (("hybrid+rerank",) if reranker else ())
        ours = evaluate(index, split, modes, reranker=reranker, depth=DEPTH, fusion="convex", weight=weight)
        ours["hybrid (rrf)"] = evaluate(index, split, ("hybrid",), depth=DEPTH, fusion="rrf")["hybrid"]
        res.update({f"ember {m}": v for m, v in ours.items()})
        results[name] = res
    print_tables(results, weight, {"ember": index_s, "bm25s": bm25s_s, "sentence-transformers": st_s})


def build_index(db: Path, folder: Path):
    from ember.rag.index import Index
    from ember.rag.pydoc_corpus import write_pydoc_topics

    if db.is_file():
        return Index(db, create=False), None
    write_pydoc_topics(folder)
    t0 = time.perf_counter()
    index = Index(db)
    index.add([folder], progress=True)
    return index, time.perf_counter() - t0


def all_chunks(store):
    ids = [int(i) for i in store._matrix()[0]]
    chunks = store.chunks(ids)
    return ids, [c.text for c in chunks], [c.doc for c in chunks]


def _runner(search_fn, docs):
    """A function from question rows to their metrics and queries/s."""
    def run(rows):
        t0 = time.perf_counter()
        rankings = [dedupe([docs[j] for j in search_fn(r["question"])]) for r in rows]
        qps = len(rows) / (time.perf_counter() - t0)
        return {**scores(rankings, rows, 5), "queries_per_s": round(qps, 2)}
    return run


def bm25s_system(texts, docs):
    import bm25s

    t0 = time.perf_counter()
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    index_s = time.perf_counter() - t0

    def search(q):
        found, _ = retriever.retrieve(bm25s.tokenize([q], stopwords="en", show_progress=False), k=DEPTH,
                                      show_progress=False)
        return [int(j) for j in found[0]]
    return _runner(search, docs), index_s


def st_system(texts, docs):
    from sentence_transformers import SentenceTransformer

    from ember.core.registry import resolve_model

    model = SentenceTransformer(str(resolve_model("minilm")), device="cpu")
    t0 = time.perf_counter()
    m = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    index_s = time.perf_counter() - t0

    def search(q):
        v = model.encode([q], normalize_embeddings=True, convert_to_numpy=True)[0]
        return list(np.argsort(-(m @ v), kind="stable")[:DEPTH])
    return _runner(search, docs), index_s


def load_reranker():
    import ember
    from ember.rag.rerank import Reranker

    model, tok = ember.load("smollm2")
    return Reranker(model.eval(), tok)


def print_tables(results: dict, weight: float, index_s: dict) -> None:
    keys = ("recall@5", "mrr", "ndcg@10", "queries_per_s")
    for split, res in results.items():
        print(f"\n{split} questions ({'never used for tuning' if split == 'test' else 'dev + test'}); "
              f"ember hybrid = convex fusion, weight {weight}")
        print(f"{'system':<26}" + "".join(f"{k:>15}" for k in keys))
        for name, m in res.items():
            print(f"{name:<26}" + "".join(f"{m[k]:>15}" for k in keys))
        for ours in (n for n in res if n.startswith("ember")):
            for ref in ("bm25s (Lucene)", "sentence-transformers"):
                r = {k: res[ours][k] / max(res[ref][k], 1e-9) for k in ("recall@5", "ndcg@10")}
                print(f"{ours} / {ref}: recall@5 x{r['recall@5']:.3f}, nDCG@10 x{r['ndcg@10']:.3f}")
    print("\nindex time (s): " + ", ".join(
        f"{k} {'reused' if v is None else f'{v:.1f}'}" for k, v in index_s.items())
        + "  (ember: read, chunk, embed and write; bm25s: tokenize and index; sentence-transformers: encode)")
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
          + f" on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
