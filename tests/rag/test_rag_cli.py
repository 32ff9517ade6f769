"""`ember rag search / ask / eval` in-process: the --json shapes, the notes, the errors. The
store is built with the fake embedder of conftest.py (patched into the command's index),
and `ask` runs a tiny random model that wears SmolLM2's tokenizer."""

import json

import pytest
from conftest import FakeEmbedder

from ember.cli import main


@pytest.fixture
def db(rag_index, monkeypatch):
    """The path of the indexed store; the CLI opens it with the fake embedder."""
    import ember.cli.rag as cli_rag
    from ember.rag.index import Index

    monkeypatch.setattr(cli_rag, "open_index", lambda path: Index(path, create=False, embedder=FakeEmbedder()))
    return rag_index.db


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_search_json_shape(db, capsys):
    code, out, _ = _run(capsys, "rag", "search", "--db", db, "--k", "3", "--json", "how do I leave a loop early")
    assert code == 0
    results = json.loads(out)["results"]
    assert len(results) == 3
    assert all(set(r) == {"doc", "chunk", "score", "text"} for r in results)
    assert results[0]["doc"].endswith("notes/loops.txt") and "break" in results[0]["text"]
    assert [r["score"] for r in results] == sorted([r["score"] for r in results], reverse=True)
    for mode in ("bm25", "dense"):
        code, out, _ = _run(capsys, "rag", "search", "--db", db, "--mode", mode, "--json", "espresso coffee")
        assert code == 0 and json.loads(out)["results"][0]["doc"].endswith("faq.jsonl#q2")


def test_search_text_output_and_doc_prefix(db, rag_corpus, capsys):
    guide = (rag_corpus / "guide").resolve().as_posix() + "/"
    code, out, _ = _run(capsys, "rag", "search", "--db", db, "--doc-prefix", guide, "--k", "2", "install")
    assert code == 0 and out.startswith(f"1. {guide}")
    assert "notes/" not in out


def test_a_query_longer_than_the_encoder_is_cut_with_a_note(db, capsys):
    limit = FakeEmbedder.max_tokens - 2
    long_query = " ".join(["loop"] * (limit + 50))
    code, out, err = _run(capsys, "rag", "search", "--db", db, "--mode", "dense", "--json", long_query)
    assert code == 0 and json.loads(out)["results"]
    assert f"note: the query has {limit + 50} tokens; the encoder reads {limit}" in err
    code, out, err = _run(capsys, "rag", "search", "--db", db, "--mode", "dense", "--json", "loop")
    assert "note:" not in err


def test_search_errors_are_one_line(db, capsys, tmp_path):
    code, _, err = _run(capsys, "rag", "search", "--db", str(tmp_path / "none.db"), "x")
    assert code == 2 and "RAG" in err and "none.db" in err and err.count("\n") == 1
    code, _, err = _run(capsys, "rag", "search", "--db", db, "--weight", "2", "x")
    assert code == 2 and "--weight must be in [0, 1], got 2.0" in err
    code, _, err = _run(capsys, "rag", "search", "--db", db, "   ")
    assert code == 2 and "give a query" in err


@pytest.fixture
def tiny_model(smollm2_tokenizer, monkeypatch):
    import torch

    import ember.cli.rag as cli_rag
    from ember.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=1024, tie_embeddings=True)
    model = Transformer(cfg).eval()
    monkeypatch.setattr(cli_rag, "_load", lambda opts: (model, smollm2_tokenizer))
    return model


def test_ask_json_shape(db, tiny_model, capsys):
    code, out, _ = _run(capsys, "rag", "ask", "--db", db, "--k", "2", "--max-tokens", "6", "--json",
                        "How do I leave a loop early?")
    assert code == 0
    ans = json.loads(out)
    assert set(ans) == {"answer", "citations", "invalid_citations", "sources", "notes"}
    assert [s["n"] for s in ans["sources"]] == [1, 2]
    assert all(set(s) == {"n", "doc", "chunk", "score", "text"} for s in ans["sources"])
    assert all(1 <= n <= 2 for n in ans["citations"])


def test_ask_text_lists_sources(db, tiny_model, capsys):
    code, out, _ = _run(capsys, "rag", "ask", "--db", db, "--k", "2", "--max-tokens", "4", "How do loops end?")
    assert code == 0 and "\nsources:\n" in out and "[1] " in out and "notes/loops.txt (chunk" in out


def test_eval_json(db, capsys, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "which statement leaves a loop early", "relevant": ["notes/loops.txt"]}\n'
                  '{"question": "coffee brewed under pressure", "relevant": ["faq.jsonl#q2"]}\n')
    code, out, _ = _run(capsys, "rag", "eval", "--db", db, "--data", str(qa), "--modes", "bm25", "hybrid", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["questions"] == 2 and set(res["modes"]) == {"bm25", "hybrid"}
    assert set(res["modes"]["bm25"]) == {"recall@5", "mrr", "ndcg@10", "queries_per_s"}
    assert res["modes"]["bm25"]["recall@5"] == 1.0
    code, _, err = _run(capsys, "rag", "eval", "--db", db, "--data", str(qa), "--modes", "splade")
    assert code == 2 and "unknown mode 'splade'" in err
