"""Search over a small in-memory store that keeps the store contract: fusion, MMR,
reranking and filters with hand-computed values."""

from dataclasses import dataclass, field

import numpy as np
import pytest

from ember.rag.search import Hits, convex, minmax, mmr, rrf, search


@dataclass(frozen=True)
class Chunk:
    id: int
    doc: str
    text: str
    start: int = 0
    end: int = 0
    headings: tuple = ()
    metadata: dict = field(default_factory=dict)


class FakeStore:
    """bm25: number of query words in the chunk (ties by id); dense: dot product."""

    def __init__(self, chunks, vectors):
        self.by_id = {c.id: c for c in chunks}
        self.vecs = {c.id: np.asarray(v, dtype=np.float32) for c, v in zip(chunks, vectors)}

    def _allowed(self, where):
        return [c for c in self.by_id.values() if not where or all(c.metadata.get(k) == v for k, v in where.items())]

    def bm25(self, query, k, where=None):
        words = set(query.lower().split())
        scored = [(c.id, float(len(words & set(c.text.lower().split())))) for c in self._allowed(where)]
        return sorted([s for s in scored if s[1] > 0], key=lambda s: (-s[1], s[0]))[:k]

    def dense(self, vector, k, where=None):
        scored = [(c.id, float(self.vecs[c.id] @ vector)) for c in self._allowed(where)]
        return sorted(scored, key=lambda s: (-s[1], s[0]))[:k]

    def chunks(self, ids):
        return [self.by_id[i] for i in ids]

    def vectors(self, ids):
        return np.stack([self.vecs[i] for i in ids])


class FakeIndex:
    def __init__(self, store, query_vectors, note=None):
        self.store, self.query_vectors, self.note = store, query_vectors, note

    def embed_query(self, text):
        return np.asarray(self.query_vectors[text], dtype=np.float32), self.note


def _unit(*v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture
def index():
    chunks = [
        Chunk(1, "loops.txt", "break ends the loop", metadata={"lang": "en"}),
        Chunk(2, "loops.txt", "continue skips to the next loop pass", metadata={"lang": "en"}),
        Chunk(3, "funcs.txt", "return ends the function", metadata={"lang": "fr"}),
        Chunk(4, "other.txt", "nothing relevant here", metadata={"lang": "en"}),
    ]
    vectors = [_unit(1, 0, 0), _unit(0.8, 0.6, 0), _unit(0, 1, 0), _unit(0, 0, 1)]
    return FakeIndex(FakeStore(chunks, vectors), {"ends the loop": _unit(0.6, 0.8, 0)})


def test_rrf_hand_computed():
    fused = dict(rrf([[10, 20], [20, 30]], k=1))
    assert fused == pytest.approx({10: 1 / 2, 20: 1 / 3 + 1 / 2, 30: 1 / 3})
    assert [i for i, _ in rrf([[10, 20], [20, 30]], k=1)] == [20, 10, 30]


def test_convex_hand_computed():
    dense = [(1, 0.9), (2, 0.7), (3, 0.5)]  # minmax: 1, 0.5, 0
    bm25 = [(3, 8.0), (1, 2.0)]  # minmax: 1, 0
    got = dict(convex(dense, bm25, weight=0.6))
    assert got == pytest.approx({1: 0.6, 2: 0.3, 3: 0.4})
    assert dict(convex(dense, bm25, 1.0)) == pytest.approx({1: 1.0, 2: 0.5, 3: 0.0})
    with pytest.raises(ValueError, match="got 1.5"):
        convex(dense, bm25, 1.5)
    assert minmax([3.0, 3.0]) == [1.0, 1.0]


def test_mmr_hand_computed():
    # items 0 and 1 are the same direction; 2 is orthogonal, 3 halfway
    v = np.stack([_unit(1, 0), _unit(1, 0), _unit(0, 1), _unit(1, 1)])
    rel = [1.0, 0.95, 0.3, 0.6]
    # lam=1: pure relevance
    assert mmr(rel, v, 4, lam=1.0) == [0, 1, 3, 2]
    # lam=0.5: after 0, gains: 1: .475-.5=-.025, 2: .15-0=.15, 3: .3-.3536=-.0536 → 2;
    # then 1: .475-.5, 3: .3-.3536 → 1 (-0.025 > -0.0536)
    assert mmr(rel, v, 3, lam=0.5) == [0, 2, 1]


def test_modes_and_ranks(index):
    bm = search(index, "ends the loop", k=3, mode="bm25")
    assert [h.chunk.id for h in bm] == [1, 2, 3]  # 3 words, then "the loop" and "ends the" (tie by id)
    assert [h.ranks for h in bm] == [{"bm25": 1}, {"bm25": 2}, {"bm25": 3}]
    dense = search(index, "ends the loop", k=2, mode="dense")
    assert [h.chunk.id for h in dense] == [2, 3]  # 0.96, 0.8, then 0.6
    hybrid = search(index, "ends the loop", k=3, mode="hybrid", fusion="rrf")
    # RRF: 1: 1/61 + 1/63; 2: 1/62 + 1/61; 3: 1/63 + 1/62
    assert [h.chunk.id for h in hybrid] == [2, 1, 3]
    assert hybrid[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert hybrid[0].ranks == {"bm25": 2, "dense": 1}
    assert isinstance(hybrid, Hits) and hybrid.note is None
    # convex (the default), weight 0.6: dense minmax 2: 1, 3: 0.8333, 1: 0.625, 4: 0;
    # bm25 minmax 1: 1, 2: 0, 3: 0 → 1: 0.775, 2: 0.6, 3: 0.5, 4: 0
    convex_hits = search(index, "ends the loop", k=4, mode="hybrid", weight=0.6)
    assert [h.chunk.id for h in convex_hits] == [1, 2, 3, 4]
    assert [h.score for h in convex_hits] == pytest.approx([0.775, 0.6, 0.5, 0.0])


def test_where_filter_reaches_the_store(index):
    hits = search(index, "ends the loop", k=5, mode="hybrid", where={"lang": "fr"})
    assert [h.chunk.id for h in hits] == [3]


def test_mmr_drops_the_near_duplicate(index):
    plain = search(index, "ends the loop", k=2, mode="dense")
    diverse = search(index, "ends the loop", k=2, mode="dense", mmr_lambda=0.3)
    assert [h.chunk.id for h in plain] == [2, 3]
    assert [h.chunk.id for h in diverse] == [2, 4]  # 3 is close to 2 (0.6); 4 is orthogonal


class WordCountReranker:
    def score(self, query, passages):
        return [float(p.count("function")) for p in passages]


def test_rerank_reorders_its_top_and_records_ranks(index):
    hits = search(index, "ends the loop", k=3, mode="bm25", reranker=WordCountReranker(), rerank_top=2)
    # the reranker sees 1 and 2 only (both 0: stable order), 3 stays behind them
    assert [h.chunk.id for h in hits] == [1, 2, 3]
    hits = search(index, "ends the loop", k=3, mode="bm25", reranker=WordCountReranker(), rerank_top=3)
    assert [h.chunk.id for h in hits] == [3, 1, 2]
    assert hits[0].ranks == {"bm25": 3, "rerank": 1}
    assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)


def test_note_is_passed_on():
    store = FakeStore([Chunk(1, "a.txt", "x")], [_unit(1, 0)])
    hits = search(FakeIndex(store, {"q": _unit(1, 0)}, note="the query was cut to 256 tokens"), "q", mode="dense")
    assert hits.note == "the query was cut to 256 tokens"


@pytest.mark.parametrize("kw, match", [
    ({"mode": "sparse"}, "unknown search mode 'sparse'"),
    ({"fusion": "max"}, "unknown fusion 'max'"),
    ({"k": 0}, "k must be an integer >= 1, got 0"),
    ({"fusion": "convex", "weight": -0.1}, "weight must be in"),
])
def test_bad_arguments(index, kw, match):
    with pytest.raises(ValueError, match=match):
        search(index, "ends the loop", **kw)
    with pytest.raises(ValueError, match="the query is empty"):
        search(index, "   ")


def test_reranker_batches_equal_one_by_one(smollm2_tokenizer):
    """Right-padded batches of a causal model give each pair the score it gets alone."""
    import torch

    from ember.model import ModelConfig, Transformer
    from ember.rag.rerank import Reranker

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=512, tie_embeddings=True)
    model = Transformer(cfg).eval()
    passages = ["break ends the loop", "a much longer passage about " * 8, "x", "continue skips"]
    batched = Reranker(model, smollm2_tokenizer, batch_size=4).score("how do loops end?", passages)
    alone = Reranker(model, smollm2_tokenizer, batch_size=1).score("how do loops end?", passages)
    assert batched == pytest.approx(alone, abs=1e-4)
    assert len(set(round(s, 4) for s in alone)) > 1  # the scores depend on the passage
    cut = Reranker(model, smollm2_tokenizer, max_passage_tokens=3)
    assert len(cut.prompt_ids("q", "word " * 100)) < len(cut.prompt_ids("q", "word " * 3)) + 5
    with pytest.raises(ValueError, match="must be >= 1"):
        Reranker(model, smollm2_tokenizer, batch_size=0)
