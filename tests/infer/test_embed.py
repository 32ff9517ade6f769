"""The Embedder on a tiny random BERT: batching by length changes nothing, counts are right,
empty input is defined, and folders that are not encoders are named as such."""

import json

import pytest
import torch

from ember.infer.embed import Embedder, length_batches, load_embedder
from ember.model import ModelConfig, Transformer
from ember.model.heads import mean_pool
from ember.tokenizer import WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "."]


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("tiny-bert", vocab_size=len(VOCAB))).eval()
    return Embedder(model, WordPieceTokenizer(VOCAB), max_seq_length=8, token_budget=12)


TEXTS = ["the cat sat on the mat .", "a dog", "", "   ", "cat", "the dog sat on a cat on the mat", "mat mat"]


def test_batched_by_length_equals_one_by_one(embedder):
    together = embedder.embed(TEXTS)
    alone = torch.cat([embedder.embed([t]) for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(len(TEXTS)))


def test_mean_pooled_vector_is_the_models_own(embedder):
    ids = torch.tensor([embedder.tokenize("the cat sat")])
    with torch.no_grad():
        h = embedder.model.hidden(ids)
    want = mean_pool(h, torch.ones_like(ids))
    torch.testing.assert_close(embedder.embed(["the cat sat"], normalize=False), want)


def test_counts_truncation_and_empty_input(embedder):
    e = embedder.embed_batch(TEXTS)
    assert e.n_tokens == [8, 4, 2, 2, 3, 8, 4]
    assert e.n_truncated == [1, 0, 0, 0, 0, 3, 0]
    # empty and whitespace-only strings are [CLS] [SEP]: the same defined vector
    assert embedder.tokenize("") == embedder.tokenize("   ") == [2, 3]
    torch.testing.assert_close(e.vectors[2], e.vectors[3])
    assert torch.isfinite(e.vectors).all()
    assert embedder.wrap([6]) == embedder.tokenize("cat")


def test_bad_input(embedder):
    with pytest.raises(ValueError, match="list of str"):
        embedder.embed("the cat")
    with pytest.raises(ValueError, match="1..8"):
        embedder.embed_ids([[2] * 9])
    with pytest.raises(ValueError, match="decoder"):
        Embedder(Transformer(ModelConfig.tiny()), WordPieceTokenizer(VOCAB))
    assert embedder.embed([]).shape == (0, 64)


def test_length_batches_respect_the_budget():
    lengths = [5, 1, 7, 7, 3, 2, 9, 4]
    batches = length_batches(lengths, token_budget=14, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 14)


def test_folders_that_are_not_encoders_say_what_they_lack(tmp_path):
    with pytest.raises(ValueError, match=r"lacks config.json, \*.safetensors, tokenizer.json or vocab.txt"):
        load_embedder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB))
    with pytest.raises(ValueError, match="model_type 'llama', not 'bert'"):
        load_embedder(tmp_path)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="is a file"):
        load_embedder(tmp_path / "model.gguf")
