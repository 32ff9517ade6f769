"""Masks for a regex alone, computed for every token at once on its full DFA table.

A broad pattern (`.*`, `[a-z ]+`) allows most of the vocabulary, so the trie walk visits
~100k trie nodes in Python (~300 ms for SmolLM2) for each new DFA state. When the pattern's
DFA is small, it is built whole instead (`table[state, byte]`, dead = the last row), and
all tokens run through it together: tokens sorted by length, position p steps only the
tokens longer than p (one gather each), ~300k table lookups in ~80 tensor ops.

>>> from ember.infer.constrained.regex_dfa import compile_regex
>>> table = full_table(compile_regex("ab|c"))
>>> tuple(table.shape)  # DFA states (start, after a, after b, after c) and the dead row
(5, 256)
"""

from __future__ import annotations

import torch

MAX_DFA_STATES = 512  # larger DFAs (long choice lists) are masked by the trie walk


def full_table(node, cap: int = MAX_DFA_STATES) -> torch.Tensor | None:
    """The regex node's whole DFA as int64 [S + 1, 256], the last row the dead state, or
    None if it has more than cap states. Rows are the node's own state ids."""
    seen, todo = {node.start}, [node.start]
    while todo:
        s = todo.pop()
        for b in range(256):
            t = node.next_state(s, b)
            if t >= 0 and t not in seen:
                if len(seen) >= cap:
                    return None
                seen.add(t)
                todo.append(t)
    n = len(node.sets)
    table = torch.full((n + 1, 256), n, dtype=torch.long)
    for (s, b), t in node.trans.items():
        if t >= 0:
            table[s, b] = t
    return table


class TokenBytes:
    """The vocabulary's ordinary tokens as a padded byte matrix, sorted by length (longest
    first): `ids` [N], `data` [N, L] (long), `counts[p]` = tokens longer than p."""

    def __init__(self, token_bytes: list[bytes | None]):
        items = sorted(((d, i) for i, d in enumerate(token_bytes) if d), key=lambda x: -len(x[0]))
        L = len(items[0][0]) if items else 0
        self.ids = torch.tensor([i for _, i in items], dtype=torch.long)
        buf = bytearray(len(items) * L)
        for row, (d, _) in enumerate(items):
            buf[row * L : row * L + len(d)] = d
        self.data = torch.frombuffer(buf, dtype=torch.uint8).view(len(items), L).long() if buf else \
            torch.zeros(0, 0, dtype=torch.long)
        self.counts = [0] * L  # lengths are sorted descending: counts[p] = rows with len > p
        for d, _ in items:
            self.counts[len(d) - 1] += 1
        for p in range(L - 2, -1, -1):
            self.counts[p] += self.counts[p + 1]


def dfa_mask(tokens: TokenBytes, table: torch.Tensor, state: int, size: int) -> torch.Tensor:
    """bool [size]: the tokens whose bytes take the DFA from state to a live state."""
    dead = table.shape[0] - 1
    states = torch.full((len(tokens.ids),), state, dtype=torch.long)
    for p, n in enumerate(tokens.counts):
        states[:n] = table[states[:n], tokens.data[:n, p]]
    mask = torch.zeros(size, dtype=torch.bool)
    mask[tokens.ids] = states != dead
    return mask
