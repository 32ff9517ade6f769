"""Contextual chunk headers: chunks are embedded under their heading path, the stored text
stays the chunk, and a store embedded the other way is refused naming both settings."""

import json

import numpy as np
import pytest
from rag_fakes import FakeEmbedder, write_corpus

from ember.rag.chunking import Span
from ember.rag.index import Index, header_text
from ember.rag.store import fts_query, query_terms

DOCS = {"guide.md": "# Install\n\n## From source\n\nRun make setup in the checkout.\n"}


def _stored(ix):
    ids = [int(i) for i in ix.store._matrix()[0]]
    return ix.store.chunks(ids), ix.store.vectors(ids)


@pytest.mark.parametrize("headers", [True, False])
def test_chunks_are_embedded_under_their_headings_only_when_asked(tmp_path, headers):
    corpus, e = write_corpus(tmp_path / "c", DOCS), FakeEmbedder()
    with Index(tmp_path / "r.db", embedder=e, headers=headers) as ix:
        ix.add([corpus], progress=False)
        chunks, vectors = _stored(ix)
    (chunk,) = [c for c in chunks if "make setup" in c.text]
    assert chunk.headings == ("Install", "From source") and chunk.text == DOCS["guide.md"].strip()
    embedded = header_text(chunk.headings, chunk.text) if headers else chunk.text
    row = chunks.index(chunk)
    np.testing.assert_allclose(vectors[row], e.embed([embedded])[0].numpy(), atol=1e-6)
    if headers:
        assert not np.allclose(vectors[row], e.embed([chunk.text])[0].numpy(), atol=1e-3)


def test_a_store_embedded_without_headers_is_refused_naming_both(tmp_path):
    corpus = write_corpus(tmp_path / "c", DOCS)
    with Index(tmp_path / "r.db", embedder=FakeEmbedder()) as ix:
        ix.add([corpus], progress=False)
        old = {k: v for k, v in json.loads(ix.store.meta()["chunker"]).items() if k != "headers"}
        ix.store.set_meta({"chunker": json.dumps(old, sort_keys=True)})  # as stores before headers
    (corpus / "new.md").write_text("# More\n\nText.\n")
    with Index(tmp_path / "r.db", embedder=FakeEmbedder()) as ix:
        with pytest.raises(ValueError, match=r'chunked with \{"chunk_tokens".*"overlap": 32\}, not .*"headers": true'):
            ix.add([corpus], progress=False)
    with Index(tmp_path / "r.db", embedder=FakeEmbedder(), rebuild=True) as ix:
        assert len(ix.add([corpus], progress=False).added) == 2


def test_a_header_that_would_not_fit_the_encoder_is_left_out(tmp_path):
    with Index(tmp_path / "r.db", embedder=FakeEmbedder()) as ix:
        text = "word " * 250
        span = Span(0, len(text) - 1, ("A long heading " * 5,), 250)
        assert ix.embedded_text(text, span) == text[:-1]
        short = Span(0, 9, ("Title",), 2)
        assert ix.embedded_text(text, short) == "Title\n\nword word"


def test_question_words_are_left_out_of_the_bm25_query():
    assert query_terms("How do I install it from source?") == ["install", "from", "source"]
    assert query_terms("what is not in it") == ["is", "not", "in"]  # operator-like words stay
    assert fts_query("Who are you?") == '"Who" OR "are" OR "you"'  # nothing else: all words
