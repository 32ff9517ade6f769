"""Retrieval-augmented generation: index files, search them, answer with cited sources.

    >>> from ember.rag import Index, answer                                    # doctest: +SKIP
    >>> index = Index("docs.db"); index.add(["notes/"])                        # doctest: +SKIP
    >>> [h.chunk.doc for h in index.search("how do I leave a loop early?", k=3)]  # doctest: +SKIP
    >>> answer("how do I leave a loop early?", index, engine).text             # doctest: +SKIP

The index, store, loaders and chunking live in index.py, store.py, loaders.py and
chunking.py; search, reranking, answers and their evaluation in search.py, rerank.py,
answer.py, metrics.py and evaluate.py. Names are imported on first use, so `import
ember.rag` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Index": "ember.rag.index",
    "search": "ember.rag.search",
    "Hit": "ember.rag.search",
    "Hits": "ember.rag.search",
    "Reranker": "ember.rag.rerank",
    "answer": "ember.rag.answer",
    "stream_answer": "ember.rag.answer",
    "Answer": "ember.rag.answer",
    "Source": "ember.rag.answer",
    "evaluate": "ember.rag.evaluate",
    "load_qa": "ember.rag.evaluate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ember.rag' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
