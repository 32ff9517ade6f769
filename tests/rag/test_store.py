"""The store interface, run on both backends: SQLite (FTS5, numpy) and PostgreSQL (its
full-text search, pgvector). The PostgreSQL cases skip only where no server can start."""

import numpy as np
import pytest
from rag_fakes import FakeEmbedder, open_store

DOCS = {
    "notes/loops.txt": ("text", {}, ["A for loop repeats its body once per item.",
                                     "The break statement leaves the loop early.",
                                     "A while loop repeats while its condition holds."]),
    "guide/install.md": ("markdown", {"level": 1}, ["Run pip install ember in a fresh virtual environment.",
                                                    "Clone the repository, then run make setup."]),
    "data/faq.jsonl#q1": ("jsonl", {"topic": "baking", "level": 2}, ["Sourdough bread rises slowly with wild yeast."]),
    "data/faq.jsonl#q2": ("jsonl", {"topic": "coffee"}, ["Espresso is coffee brewed under pressure."]),
}
E = FakeEmbedder()


def put(store, path, kind, meta, texts, hash="h"):
    text = "\n\n".join(texts)
    spans, at = [], 0
    for t in texts:
        spans.append((at, at + len(t), (path.split("/")[0],), t, {}))
        at += len(t) + 2
    store.put_document("/abs/" + path, path, kind, hash, meta, spans, E.embed(texts).numpy(),
                       file="/abs/" + path.split("#")[0])
    return text


@pytest.fixture
def store(backend):
    s = open_store(backend)
    s.set_meta({"embedding_model": E.name, "dim": E.dim})
    for path, (kind, meta, texts) in DOCS.items():
        put(s, path, kind, meta, texts)
    yield s
    s.close()


def doc_of(store, hits):
    return [c.doc for c in store.chunks([i for i, _ in hits])]


def test_meta_counts_and_documents(store):
    assert (store.embedding_model, store.dim, store.count()) == (E.name, 32, 7)
    assert store.documents() == sorted(DOCS)
    assert store.document_states()["/abs/data/faq.jsonl#q2"] == ("/abs/data/faq.jsonl", "data/faq.jsonl#q2", "h")


def test_bm25_ranks_the_matching_chunk_first(store):
    hits = store.bm25("how do I break out of a loop", 3)
    assert store.chunks([hits[0][0]])[0].text == "The break statement leaves the loop early."
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True) and hits[-1][1] > 0
    assert store.bm25("sourdough", 5) == store.bm25("SOURDOUGH!", 5) and len(store.bm25("sourdough", 5)) == 1
    assert store.bm25("xylophone", 5) == [] and store.bm25("", 5) == []


@pytest.mark.parametrize("query", ['"', "AND", "loop AND", "OR NOT", "*", "loop*", "a:b", "(loop", "NEAR(a b)",
                                   "'; DROP TABLE chunks; --", "headings:loop", "^loop", "loop -break", "\\"])
def test_raw_queries_are_plain_words(store, query):
    hits = store.bm25(query, 5)  # never a syntax error
    words = [w.lower() for w in __import__("re").findall(r"\w+", query)]
    if "loop" in words:
        assert hits and all(c.doc == "notes/loops.txt" for c in store.chunks([i for i, _ in hits]))
    assert store.count() == 7


def test_dense_is_exact_cosine(store):
    q = E.embed(["a loop that repeats"])[0].numpy()
    hits = store.dense(q, 7)
    ids = [i for i, _ in hits]
    want = store.vectors(ids) @ q
    assert np.allclose([s for _, s in hits], want, atol=1e-5)
    assert sorted(ids) == sorted(i for i, _ in store.dense(q, 100))  # every chunk, nothing more
    assert all(a >= b - 1e-6 for (_, a), (_, b) in zip(hits, hits[1:]))


def test_where_filters_both_searches(store):
    q = E.embed(["loop coffee bread pip"])[0].numpy()
    cases = {
        (("doc_prefix", "guide/"),): {"guide/install.md"},
        (("kind", "jsonl"),): {"data/faq.jsonl#q1", "data/faq.jsonl#q2"},
        (("topic", "coffee"),): {"data/faq.jsonl#q2"},
        (("level", 1),): {"guide/install.md"},
        (("level", 2.0), ("kind", "jsonl")): {"data/faq.jsonl#q1"},
        (("doc_prefix", "data/"), ("topic", "tea")): set(),
    }
    for where, want in cases.items():
        assert set(doc_of(store, store.dense(q, 10, dict(where)))) == want, where
    assert doc_of(store, store.bm25("loop espresso pip yeast", 10, {"doc_prefix": "notes/"})) == ["notes/loops.txt"] * 3
    assert doc_of(store, store.bm25("loop espresso pip yeast", 10, {"topic": "coffee"})) == ["data/faq.jsonl#q2"]


def test_bad_filters_and_vectors_are_clear_errors(store):
    with pytest.raises(ValueError, match="where key 'a-b'"):
        store.bm25("loop", 3, {"a-b": 1})
    with pytest.raises(ValueError, match=r"where\['topic'\] must be"):
        store.dense(np.ones(32, np.float32), 3, {"topic": ["x"]})
    with pytest.raises(ValueError, match="query vector has 3 values; the store's vectors have 32"):
        store.dense(np.ones(3, np.float32), 3)
    with pytest.raises(KeyError, match="no chunk with id 999999"):
        store.chunks([999999])


def test_chunks_and_vectors_come_in_the_order_asked(store):
    ids = [i for i, _ in store.dense(E.embed(["loop"])[0].numpy(), 7)][::-1]
    chunks = store.chunks(ids)
    assert [c.id for c in chunks] == ids
    loops = [c for c in chunks if c.doc == "notes/loops.txt"]
    text = "\n\n".join(DOCS["notes/loops.txt"][2])
    assert all(text[c.start:c.end] == c.text and c.headings == ("notes",) for c in loops)
    v = store.vectors(ids)
    assert v.dtype == np.float32 and v.shape == (7, 32)
    assert np.allclose(v, E.embed([c.text for c in chunks]).numpy(), atol=1e-6)
    faq = store.chunks([i for i in ids if store.chunks([i])[0].doc.endswith("#q1")])[0]
    assert faq.metadata == {"topic": "baking", "level": 2}


def test_replace_and_remove_keep_keyword_statistics_right(store, backend, tmp_path):
    put(store, "notes/loops.txt", "text", {}, ["Loops repeat. Nothing about zebras here."], hash="h2")
    store.remove_documents(["/abs/data/faq.jsonl#q2"])
    assert store.bm25("break statement", 5) == [] and store.count() == 4
    assert store.document_states()["/abs/notes/loops.txt"][2] == "h2"
    # a fresh store holding the same documents scores every query the same
    kind, where = backend
    fresh = open_store((kind, (where[0], where[1] + "f")) if kind == "postgres" else (kind, tmp_path / "fresh.db"))
    fresh.set_meta({"embedding_model": E.name, "dim": E.dim})
    for path in ["guide/install.md", "data/faq.jsonl#q1"]:
        put(fresh, path, *DOCS[path])
    put(fresh, "notes/loops.txt", "text", {}, ["Loops repeat. Nothing about zebras here."], hash="h2")
    for query in ["loops repeat", "pip install", "zebras yeast run"]:
        a, b = store.bm25(query, 5), fresh.bm25(query, 5)
        assert [c.text for c in store.chunks([i for i, _ in a])] == [c.text for c in fresh.chunks([i for i, _ in b])]
        assert np.allclose([s for _, s in a], [s for _, s in b])
    fresh.close()


def test_clear_empties_and_a_second_writer_is_refused(store, backend):
    other = open_store(backend)
    with store.lock():
        with pytest.raises(ValueError, match="being indexed"):
            with other.lock():
                pass
    with other.lock():  # released
        pass
    other.close()
    store.clear()
    assert store.count() == 0 and store.documents() == [] and store.bm25("loop", 3) == []
    assert store.dense(np.ones(32, np.float32), 3) == []


def test_an_unreachable_server_is_a_clear_error_without_the_password():
    pytest.importorskip("psycopg")
    from ember.rag.pgstore import PgStore

    with pytest.raises(ValueError, match=r"cannot connect to PostgreSQL at 'postgresql://me:\*\*\*@127.0.0.1:1/x\?connect") as e:
        PgStore("postgresql://me:hunter2@127.0.0.1:1/x?connect_timeout=5")
    assert "hunter2" not in str(e.value)
