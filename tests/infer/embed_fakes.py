"""A stand-in for ember.infer.embed.Embedder with the same API, for the server's tests:
fast and deterministic, and it can hold its forward to let requests queue up."""

import threading

import torch

CLS, SEP = 256, 257


class FakeEmbedder:
    """Bytes as tokens between [CLS] and [SEP]; a vector is the normalised mean of a fixed
    random table's rows (so it depends on the tokens, and not on the batch it rides in)."""

    dim, max_tokens, vocab_size = 8, 32, 260

    def __init__(self):
        self.table = torch.randn(self.vocab_size, self.dim, generator=torch.Generator().manual_seed(0))
        self.batches: list[int] = []
        self.gate = threading.Event()  # cleared: embed_ids waits (at most 10 s) until it is set
        self.gate.set()
        self.entered = threading.Event()  # set when embed_ids is called

    def tokenize(self, text: str) -> list[int]:
        return self.wrap(list(text.encode("utf-8")))

    def wrap(self, ids: list[int]) -> list[int]:
        return [CLS, *ids, SEP]

    def embed_ids(self, batch: list[list[int]]) -> torch.Tensor:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(batch))
        v = torch.stack([self.table[ids].mean(0) for ids in batch])
        return torch.nn.functional.normalize(v, dim=-1)
