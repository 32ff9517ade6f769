"""Fixtures for the training tests: small token shards from the pydoc topics."""

import pytest


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    from ember.data.corpus import pydoc_topics_text
    from ember.data.shards import prepare_shards
    from ember.tokenizer import train_bpe

    text = pydoc_topics_text()[:200_000]
    docs = [text[i : i + 4000] for i in range(0, len(text), 4000)]  # ~50 documents
    tok = train_bpe(docs, 512, special_tokens=["<|endoftext|>"], eos_tokens=["<|endoftext|>"], progress=False)
    out = tmp_path_factory.mktemp("shards")
    prepare_shards(out, tok, texts=docs, progress=False, workers=1)
    return out
