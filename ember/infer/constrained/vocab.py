"""The tokenizer's vocabulary prepared for masking: token bytes in tries, precomputed masks.

Built once per tokenizer (cached by a weak reference to it) and shared by every grammar
compiled for it:

- `trie`: every ordinary token's raw bytes (byte-level BPE decoded through the byte
  table, so a token may hold part of a UTF-8 character) in a byte trie. A mask is the set
  of tokens reached by a depth-first walk that steps the matcher threads byte by byte and
  prunes a subtree at the first byte no thread accepts.
- `string_body`: tokens made only of bytes that continue a JSON string from a clean
  position (no `"`, `\\`, control bytes; UTF-8 that stays valid, possibly ending inside a
  character), with `string_chars` their character counts. Inside a free string (most of
  the tokens a JSON reply spends) a mask is this precomputed set OR a walk over
  `rest_trie`, the tokens outside it (432 of SmolLM2's 49,135 ordinary tokens: a walk of
  ~700 trie nodes instead of ~100k).
- `text_mask`: every ordinary token (free text).

Special tokens (`<|im_end|>`, ...) are never in a trie: EOS ids are allowed only when the
output is complete (grammar.py), the others never.

>>> from ember.tokenizer import load_tokenizer                      # doctest: +SKIP
>>> v = vocab_for(load_tokenizer("smollm2")); int(v.string_body.sum())  # doctest: +SKIP
48703

Preparing SmolLM2's vocabulary takes ~1.2-2 s (on a shared 2-core machine) and ~33 MB.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

from .json_nodes import _LEAD

MASK_CACHE_SIZE = 1024  # masks kept per vocabulary (49k bools each: ~50 MB at most)
COST_CACHE_SIZE = 128  # closing-cost vectors kept (49k int32 each: ~25 MB at most)
GRAMMAR_CACHE_SIZE = 64


def _trie(items) -> dict:
    """A byte trie: node = {byte: child, None: [ids ending here]}."""
    root: dict = {}
    for i, data in items:
        node = root
        for b in data:
            node = node.setdefault(b, {})
        node.setdefault(None, []).append(i)
    return root


def string_body_chars(data: bytes) -> int:
    """Characters that `data` adds to a JSON string body, or -1 if it cannot continue one
    from a clean position. A trailing incomplete UTF-8 character counts.

    >>> string_body_chars("é中".encode()), string_body_chars(b'a"'), string_body_chars(b"\\xe4")
    (2, -1, 1)
    """
    n, pending, lo, hi = 0, 0, 0, 0
    for b in data:
        if pending:
            if not lo <= b <= hi:
                return -1
            pending, lo, hi = pending - 1, 0x80, 0xBF
            continue
        if b in (0x22, 0x5C) or b < 0x20:
            return -1
        n += 1
        if b >= 0x80:
            lead = _LEAD.get(b)
            if lead is None:
                return -1
            pending, lo, hi = lead
    return n


class Vocab:
    """A tokenizer's ordinary tokens as bytes, tries and masks (see the module docstring)."""

    def __init__(self, tokenizer):
        self.size = int(tokenizer.vocab_size)
        special = set(getattr(tokenizer, "special_tokens", {}).values())
        self.eos_ids = sorted(int(i) for i in tokenizer.eos_token_ids)
        self.token_bytes: list[bytes | None] = [None] * self.size
        items = []
        for i in range(self.size):
            if i in special:
                continue
            try:
                data = tokenizer.id_to_bytes(i)
            except (ValueError, KeyError):
                continue  # an unused id (a padded vocabulary)
            if data:
                self.token_bytes[i] = data
                items.append((i, data))
        self.text_mask = torch.zeros(self.size, dtype=torch.bool)
        self.text_mask[[i for i, _ in items]] = True
        chars = [-1] * self.size
        for i, data in items:
            chars[i] = string_body_chars(data)
        self.string_chars = torch.tensor(chars, dtype=torch.int32)
        self.string_body = self.string_chars >= 0
        self.trie = _trie(items)
        self.rest_trie = _trie((i, d) for i, d in items if chars[i] < 0)
        self._lock = threading.Lock()
        self.masks: OrderedDict = OrderedDict()
        self.costs: OrderedDict = OrderedDict()  # per thread, each token's closing cost (budget.py)
        self._with_byte: OrderedDict = OrderedDict()
        self.grammars: OrderedDict = OrderedDict()

    def cached(self, cache: OrderedDict, key, make, size: int):
        """LRU lookup: cache[key], computed by make() on a miss. Thread-safe (a server
        compiles grammars in request threads while the engine thread reads masks); two
        threads missing the same key both compute it, and the values are equal."""
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                return hit
        value = make()
        with self._lock:
            value = cache.setdefault(key, value)
            if len(cache) > size:
                cache.popitem(last=False)
        return value

    def token_matrix(self):
        """The ordinary tokens as a padded byte matrix (dfa_mask.TokenBytes), built on first use."""
        from .dfa_mask import TokenBytes

        return self.cached(self._with_byte, "matrix", lambda: TokenBytes(self.token_bytes), 257)

    def ids_with_byte(self, byte: int) -> list[int]:
        """Ids of the ordinary tokens whose bytes contain byte (cached)."""
        make = lambda: [i for i, d in enumerate(self.token_bytes) if d is not None and byte in d]  # noqa: E731
        return self.cached(self._with_byte, byte, make, 256)

    def ids_to_mask(self, ids: list[int], base: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.zeros(self.size, dtype=torch.bool) if base is None else base.clone()
        if ids:
            mask[torch.tensor(ids, dtype=torch.long)] = True
        return mask


_VOCABS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_VOCABS_LOCK = threading.Lock()


def vocab_for(tokenizer) -> Vocab:
    """The prepared vocabulary of this tokenizer object (built on first use, then reused
    for as long as the tokenizer lives)."""
    with _VOCABS_LOCK:
        v = _VOCABS.get(tokenizer)
        if v is None:
            v = _VOCABS[tokenizer] = Vocab(tokenizer)
        return v
