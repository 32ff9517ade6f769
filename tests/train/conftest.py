"""Fixtures for the training tests: small token shards from the pydoc topics, and a tiny
random chat model wearing SmolLM2's tokenizer."""

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


@pytest.fixture(scope="session")
def mask_shards(tmp_path_factory):
    """Shards whose BPE has a [MASK] token, for the encoder objectives."""
    from ember.data.corpus import pydoc_topics_text
    from ember.data.shards import prepare_shards
    from ember.tokenizer import train_bpe

    text = pydoc_topics_text()[:60_000]
    docs = [text[i : i + 3000] for i in range(0, len(text), 3000)]
    tok = train_bpe(docs, 400, special_tokens=["<|endoftext|>", "[MASK]"], eos_tokens=["<|endoftext|>"])
    out = tmp_path_factory.mktemp("mask-shards")
    prepare_shards(out, tok, texts=docs, progress=False, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory, smollm2_tokenizer):
    """A random tiny Llama wearing SmolLM2's tokenizer and ChatML template: an HF folder."""
    import torch

    from ember.model import ModelConfig, Transformer
    from ember.model.convert.hf import save_hf

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=smollm2_tokenizer.vocab_size, max_seq_len=256, tie_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-chat")
    save_hf(Transformer(cfg), folder)
    smollm2_tokenizer.save(folder)
    return folder
