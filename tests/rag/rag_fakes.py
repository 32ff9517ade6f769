"""RAG test helpers: a tiny corpus, a fake deterministic embedder, opening a store on a backend.

FakeEmbedder stands in for MiniLM so most tests need no model: words are its tokens, a
text's vector is the normalised sum of signed hashed one-hots (a bag of words in 32 dims),
so texts sharing words are close and the same text always gives the same vector.
"""

import zlib

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

    name, dim, max_tokens = "fake-bow-32", 32, 256  # as MiniLM: 254 tokens and [CLS], [SEP]
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


def write_corpus(folder, files=None):
    """Write `files` (default CORPUS) under `folder`; returns the folder."""
    for rel, text in (CORPUS if files is None else files).items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return folder


def open_store(backend):
    """A new store on `backend` (the fixture's value); a second call opens the same store."""
    kind, where = backend
    if kind == "postgres":
        from ember.rag.pgstore import PgStore

        return PgStore(where[0], schema=where[1])
    from ember.rag.store import SQLiteStore

    return SQLiteStore(where, create=True)


def tiny_bert_embedder():
    """A real Embedder over a random tiny BERT (seeded) and a 19-word WordPiece vocabulary."""
    from ember.infer.embed import Embedder
    from ember.model import ModelConfig, Transformer
    from ember.tokenizer import WordPieceTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij", ".", "it", "is", "red"]
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("tiny-bert", vocab_size=len(vocab))).eval()
    return Embedder(model, WordPieceTokenizer(vocab))
