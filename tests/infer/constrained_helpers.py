"""Shared pieces for the constrained-decoding tests: the real SmolLM2 tokenizer (its
vocabulary trie is built once per process), a brute-force mask, and a walker that feeds
a constraint random allowed tokens and then steers it to an end."""

import functools
import random

import torch

from ember.infer.constrained.nodes import step_all
from ember.tokenizer import load_tokenizer


@functools.cache
def smollm2():
    return load_tokenizer("smollm2")


def brute_mask(c) -> torch.Tensor:
    """The mask allowed() must equal, by stepping every token's bytes through the threads."""
    v = c.grammar.vocab
    mask = torch.zeros(v.size, dtype=torch.bool)
    for i, data in enumerate(v.token_bytes):
        if data is None:
            continue
        threads = c._threads
        for b in data:
            threads = step_all(threads, b)
            if not threads:
                break
        mask[i] = bool(threads)
    if c.complete:
        mask[v.eos_ids] = True
    return mask


_CLOSERS = [b'"', b"}", b"]", b"0", b",", b"true", b"null"]


def random_walk(c, seed: int, n_random: int = 12, n_finish: int = 400) -> str:
    """Random allowed tokens for n_random steps, then prefer what closes the output (EOS,
    then quotes and brackets, then the shortest token) until it is done. Asserts the
    allowed set is never empty and every chosen token is accepted. Returns c.text()."""
    rng = random.Random(seed)
    v = c.grammar.vocab
    tok = smollm2()
    closers = [tok.encode(s.decode()) for s in _CLOSERS]
    closers = [ids[0] for ids in closers if len(ids) == 1]
    for step in range(n_random + n_finish):
        if c.done:
            return c.text()
        mask = c.allowed()
        ids = mask.nonzero().flatten().tolist()
        assert ids, f"dead end after {c.text()!r}"
        if step < n_random:
            pick = rng.choice(ids)
        else:
            eos = [i for i in v.eos_ids if mask[i]]
            close = [i for i in closers if mask[i]]
            pick = (eos or close or [min(ids, key=lambda i: (len(v.token_bytes[i]), i))])[0]
        c.advance(pick)
    raise AssertionError(f"not done after {n_random + n_finish} tokens: {c.text()!r}")
