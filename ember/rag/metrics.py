"""Retrieval metrics with binary relevance at document level: recall@k, MRR, nDCG@k.

A question's `relevant` list names documents. An item names a document path `doc` when
(`matches`):

- it equals `doc`, or
- it is a trailing run of whole path components of `doc` (`"b/c.txt"` names `"a/b/c.txt"`),
  or
- it equals the file name of `doc` without its extension (`"assert"` names
  `"/tmp/pydoc/assert.txt"`).

Not a bare substring: `"for"` must not name `"formatstrings.txt"`.

Results are chunks; several chunks of one document count once: the ranked chunk list is
first reduced to its documents in order of first appearance (`dedupe`), and the metrics
are computed on that document ranking. Each relevant item is assumed to name one
document, so the ideal ranking puts min(|relevant|, k) relevant documents first.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath


def matches(item: str, doc: str) -> bool:
    """Whether a relevant `item` names the document path `doc` (module docstring).

    >>> matches("assert", "/tmp/topics/assert.txt"), matches("for", "/tmp/topics/formatstrings.txt")
    (True, False)
    >>> matches("topics/assert.txt", "/tmp/topics/assert.txt")
    True
    """
    doc_posix = doc.replace("\\", "/")
    item_posix = item.replace("\\", "/")
    if item_posix == doc_posix or doc_posix.endswith("/" + item_posix.lstrip("/")):
        return True
    return PurePosixPath(doc_posix).stem == item_posix


def dedupe(docs: list[str]) -> list[str]:
    """Documents in order of first appearance.

    >>> dedupe(["a", "b", "a", "c", "b"])
    ['a', 'b', 'c']
    """
    return list(dict.fromkeys(docs))


def _hits(docs: list[str], relevant: list[str]) -> list[bool]:
    """Per ranked document: does it match a relevant item not yet credited to an earlier
    document (so one item is never counted twice)."""
    left, out = list(relevant), []
    for d in docs:
        found = next((r for r in left if matches(r, d)), None)
        if found is not None:
            left.remove(found)
        out.append(found is not None)
    return out


def recall_at_k(docs: list[str], relevant: list[str], k: int) -> float:
    """Share of the relevant items found among the first k documents.

    >>> recall_at_k(["x", "a", "y", "b"], ["a", "b"], 3)
    0.5
    """
    _check(relevant, k)
    return sum(_hits(docs[:k], relevant)) / len(relevant)


def reciprocal_rank(docs: list[str], relevant: list[str], k: int = 10) -> float:
    """1 / (rank of the first relevant document), 0 when none is in the first k; its mean
    over questions is the MRR.

    >>> reciprocal_rank(["x", "y", "a"], ["a"])
    0.3333333333333333
    """
    _check(relevant, k)
    return next((1 / (i + 1) for i, hit in enumerate(_hits(docs[:k], relevant)) if hit), 0.0)


def ndcg_at_k(docs: list[str], relevant: list[str], k: int = 10) -> float:
    """Normalised discounted cumulative gain: sum of 1/log2(rank + 1) over relevant
    documents in the first k, over the same sum for the ideal ranking.

    >>> round(ndcg_at_k(["x", "a"], ["a"]), 4)  # 1/log2(3) over 1/log2(2)
    0.6309
    """
    _check(relevant, k)
    dcg = sum(1 / math.log2(i + 2) for i, hit in enumerate(_hits(docs[:k], relevant)) if hit)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal


def _check(relevant: list[str], k: int) -> None:
    if not relevant:
        raise ValueError("a question needs at least one relevant document")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
