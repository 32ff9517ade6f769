"""Prefix caching: the K/V of prompt prefixes seen before, kept in blocks and reused.

A sequence is cut into blocks of `block_size` tokens. A block is keyed by (its parent
block's id, its tokens), a chain: block j is found only under the exact blocks 0..j-1 before
it, so a hit is the K/V of exactly that token prefix (keys are compared as tuples, not by a
hash alone: no collision can return wrong K/V). Each entry holds a copy of its block's K/V,
per layer (k, v) of shape (Hkv, block_size, Dh).

The engine (prefill.py) looks up the longest cached prefix of a new prompt (all but its
last token: at least one token is always prefilled, for its logits): the run of whole
blocks, then, token-granular, the leading tokens the next block shares with a cached block
under the same parent (so a system prompt or chat preamble shorter than a block, shared
by prompts that differ after it, is found). It copies that K/V into the request's cache
row and prefills only the rest, at the positions that follow.
When a request leaves its slot, the full blocks of what its row holds (prompt and every fed
token) go in, so a chat's next turn, which repeats this turn's prompt and reply, finds them.
Entries are copied into rows, never shared, so no reference counts are needed: eviction
(least recently used first, under a byte budget) can never pull K/V from under a request.

Exactness: the reused K/V are those a prefill of the same tokens computed, but within a
forward of another length (or a decode step), and CPU matmuls round by the number of rows:
the reused K/V differ from a fresh prefill's by float rounding (~1e-7 relative in fp32).
Tokens are the same unless two candidates tie to within that; log-probs agree to float
tolerance, not bitwise (tests/infer/test_prefix_cache.py; bitwise in fp64 is not promised either).

>>> import torch
>>> pc = PrefixCache(block_size=2, budget_bytes=10**6)
>>> pc.insert([1, 2, 3, 4, 5], lambda s, e: [(torch.zeros(1, e - s, 1),) * 2])
>>> pc.match([1, 2, 3, 9])[0], pc.match([1, 2, 3, 4, 5])[0], pc.match([7, 2])[0]
(3, 4, 0)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

__all__ = ["PrefixCache", "make_prefix_cache"]

KV = list  # per layer (k, v), each (Hkv, n, Dh)


class PrefixCache:
    """Blocks of K/V keyed by their token prefix, LRU-evicted beyond `budget_bytes`."""

    def __init__(self, block_size: int = 32, budget_bytes: int = 256 * 2**20, block_bytes: int | None = None):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"prefix-cache block_size must be >= 1 token, got {block_size!r}")
        if block_bytes is not None and budget_bytes < block_bytes:
            raise ValueError(f"prefix-cache budget of {budget_bytes} bytes is less than one block "
                             f"({block_size} tokens = {block_bytes} bytes)")
        self.block_size, self.budget_bytes = block_size, budget_bytes
        self.entries: OrderedDict[tuple, tuple[int, KV]] = OrderedDict()  # key → (id, kv); LRU first
        self._children: dict[tuple[int, int], set[tuple]] = {}  # (parent id, first token) → keys
        self.bytes, self.hits, self.queries, self._next_id = 0, 0, 0, 1

    def _chain(self, tokens: Sequence[int]):
        """Yield (start, key, entry or None) for each full block of tokens, walking the chain
        while blocks are cached (the first missing block's key comes last)."""
        parent, b = 0, self.block_size
        for s in range(0, len(tokens) - b + 1, b):
            key = (parent, tuple(tokens[s : s + b]))
            entry = self.entries.get(key)
            yield s, key, entry
            if entry is None:
                return
            parent = entry[0]

    def match(self, tokens: Sequence[int]) -> tuple[int, list[KV]]:
        """The longest cached prefix of tokens: (its length, the K/V of its blocks, the last
        one cut to the tokens it shares when the prefix ends inside a block)."""
        found = [(key, e) for _, key, e in self._chain(tokens) if e is not None]
        n = len(found) * self.block_size
        part = self._partial(found[-1][1][0] if found else 0, tokens[n : n + self.block_size])
        kvs = [e[1] for _, e in found]
        if part is not None:
            key, j = part
            self.entries.move_to_end(key)
            kvs.append([(k[:, :j], v[:, :j]) for k, v in self.entries[key][1]])
            n += j
        for key, _ in reversed(found):  # children first: a parent stays more recent than them
            self.entries.move_to_end(key)
        self.queries += 1
        self.hits += n > 0
        return n, kvs

    def _partial(self, parent: int, head: Sequence[int]) -> tuple[tuple, int] | None:
        """The cached block under `parent` sharing the most leading tokens with head (fewer
        than a block, or a block not cached): (its key, how many), or None if none shares one."""
        best, most = None, 0
        for key in self._children.get((parent, head[0]), ()) if head else ():
            block, j = key[1], 1
            while j < len(head) and block[j] == head[j]:
                j += 1
            if j > most:
                best, most = key, j
        return None if best is None else (best, most)

    def insert(self, tokens: Sequence[int], read: Callable[[int, int], KV]) -> None:
        """Cache the full blocks of tokens not cached yet; read(start, stop) copies their K/V."""
        chain = list(self._chain(tokens))
        if not chain:
            return
        s, key, entry = chain[-1]
        if entry is not None:  # every block already cached
            return
        b, end = self.block_size, len(tokens) - len(tokens) % self.block_size
        kv = read(s, end)  # the missing blocks in one copy
        parent, keys = key[0], [k for _, k, _ in chain[:-1]]
        for j in range(s, end, b):
            block = [(k[:, j - s : j - s + b].clone(), v[:, j - s : j - s + b].clone()) for k, v in kv]
            keys.append((parent, tuple(tokens[j : j + b])))
            parent, self._next_id = self._next_id, self._next_id + 1
            self.entries[keys[-1]] = (parent, block)
            self._children.setdefault((keys[-1][0], tokens[j]), set()).add(keys[-1])
            self.bytes += _nbytes(block)
        for key in reversed(keys):  # children first: a parent stays more recent than them
            self.entries.move_to_end(key)
        self._evict()

    def _evict(self) -> None:
        while self.bytes > self.budget_bytes and self.entries:
            key, (_, kv) = self.entries.popitem(last=False)
            siblings = self._children[key[0], key[1][0]]
            siblings.discard(key)
            if not siblings:
                del self._children[key[0], key[1][0]]
            self.bytes -= _nbytes(kv)

    def clear(self) -> None:
        self.entries.clear()
        self._children.clear()
        self.bytes = 0


def _nbytes(kv: KV) -> int:
    return sum(k.nbytes + v.nbytes for k, v in kv)


def make_prefix_cache(model, budget_mb: float, block_size: int = 32) -> PrefixCache | None:
    """The engine's prefix cache: None when budget_mb is 0 (off)."""
    if isinstance(budget_mb, bool) or not isinstance(budget_mb, (int, float)) or not budget_mb >= 0:
        raise ValueError(f"prefix_cache_mb must be a number >= 0 (0 = off), got {budget_mb!r}")
    if budget_mb == 0:
        return None
    need = block_bytes(model, block_size)
    if budget_mb * 2**20 < need:
        raise ValueError(f"prefix_cache_mb {budget_mb} is less than one block of {block_size} tokens "
                         f"({need / 2**20:.4f} MiB for this model)")
    return PrefixCache(block_size, int(budget_mb * 2**20), need)


def block_bytes(model, block_size: int) -> int:
    """Bytes of one block's K/V for `model` (its parameter dtype)."""
    cfg, p = model.config, next(model.parameters())
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * block_size * p.element_size()


def write_blocks(cache, row: int, blocks: list[KV]) -> None:
    """Copy matched blocks into cache row `row` at positions 0.., in order."""
    start = 0
    for kv in blocks:
        cache.write(row, start, kv)
        start += kv[0][0].shape[1]

