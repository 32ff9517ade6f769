"""Shared RAG fixtures: a tiny corpus folder, a fake deterministic embedder, an index of both.

FakeEmbedder stands in for MiniLM so most tests need no model: words are its tokens, a
text's vector is the normalised sum of signed hashed one-hots (a bag of words in 32 dims),
so texts sharing words are close and the same text always gives the same vector.
"""

import zlib

import pytest
import torch

CORPUS = {
    "guide/install.md": "# Install\n\nRun pip install ember in a fresh virtual environment.\n\n"
                        "## From source\n\nClone the repository, then run make setup. The build needs "
                        "a C compiler for nothing: ember is pure Python.\n",
    "guide/usage.md": "# Usage\n\nThe chat command opens a conversation with the model.\n\n"
                      "## Flags\n\nUse --temperature to change sampling. Lower values give focused answers.\n",
    "notes/loops.txt": "A for loop repeats its body once per item. The break statement leaves the loop "
                       "early; continue skips to the next item.\n\nA while loop repeats while its "
                       "condition holds.\n",
    "notes/page.html": "<html><head><title>x</title><style>p{}</style></head><body><h1>Tokenizers</h1>"
                       "<p>A tokenizer turns text into integer ids.</p><script>var a=1;</script>"
                       "<h2>BPE</h2><p>Byte pair encoding merges the most frequent pair.</p></body></html>",
    "code/stack.py": "\"\"\"A tiny stack.\"\"\"\n\n\nclass Stack:\n    def push(self, item):\n"
                     "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n\n\n"
                     "def peek(stack):\n    return stack.items[-1]\n",
    "data/faq.jsonl": '{"id": "q1", "text": "Sourdough bread rises slowly with wild yeast.", "topic": "baking"}\n'
                      '{"id": "q2", "text": "Espresso is coffee brewed under pressure.", "topic": "coffee"}\n',
}


class FakeEmbedder:
    """The embedder interface of ember.infer.embed.Embedder, hashed bag-of-words, dim 32."""

    name, dim, max_tokens = "fake-bow-32", 32, 128
    CLS, SEP = 0, 1

    def __init__(self):
        self.calls = 0  # texts embedded so far

    def words(self, text: str) -> list[str]:
        import re

        return re.findall(r"\w+|[^\w\s]", text.lower())

    def tokenize(self, text: str) -> list[int]:
        return self.wrap([2 + zlib.crc32(w.encode()) % 30000 for w in self.words(text)])

    def wrap(self, ids: list[int]) -> list[int]:
        return [self.CLS, *ids, self.SEP]

    def embed(self, texts: list[str]) -> torch.Tensor:
        self.calls += len(texts)
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for w in self.words(text)[: self.max_tokens - 2]:
                h = zlib.crc32(w.encode())
                out[i, h % self.dim] += 1.0 if (h >> 8) & 1 else -1.0
            out[i, 0] += 1e-3  # never the zero vector
        return torch.nn.functional.normalize(out, dim=-1)


@pytest.fixture
def fake_embedder():
    return FakeEmbedder()


def write_corpus(folder, files=None):
    """Write `files` (default CORPUS) under `folder`; returns the folder."""
    for rel, text in (CORPUS if files is None else files).items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def rag_corpus(tmp_path):
    """A small folder: Markdown, text, HTML, Python and JSONL files."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def rag_index(tmp_path, rag_corpus, fake_embedder):
    """An Index over rag_corpus with the fake embedder, in tmp_path/rag.db (64-token chunks)."""
    from ember.rag.index import Index

    index = Index(tmp_path / "rag.db", embedder=fake_embedder, chunk_tokens=64, overlap=8)
    index.add([rag_corpus], progress=False)
    yield index
    index.close()
