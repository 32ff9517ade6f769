"""`Grammar` (a compiled constraint over one vocabulary) and `TokenConstraint` (one
request's walk through it).

A mask is the union over the live threads of each thread's mask, and a thread's mask is
cached in the vocabulary's LRU (keyed by the thread itself, a hashable tuple), so a state
that repeats (inside a free string, after a comma in an array of numbers) costs a dict
lookup. A miss walks the vocabulary trie (vocab.py), with the free-string fast path.
EOS ids are allowed exactly when some thread may end here.

>>> from ember.infer.constrained.nodes import Lit                   # doctest: +SKIP
>>> c = Grammar(Lit(b"ok"), vocab_for(tok)).start()                 # doctest: +SKIP
>>> c.allowed().nonzero().flatten()                                 # doctest: +SKIP
"""

from __future__ import annotations

import codecs
import functools

import torch

from .budget import cost_vector, max_single_step, shortest_output, threads_close
from .dfa_mask import dfa_mask, full_table
from .json_nodes import Str
from .nodes import MarkerText, Node, Seq, accepting, initial_threads, step_all, walk
from .regex_dfa import RegexNode
from .vocab import MASK_CACHE_SIZE, Vocab

# A regex state with more live next bytes than this is masked on its full DFA table, all
# tokens at once (dfa_mask.py); with fewer, the trie walk prunes early and is faster.
DFA_MASK_FANOUT = 16
MARGIN_SLACK = 16  # see Grammar.margin


class Grammar:
    """A constraint compiled for one vocabulary; `start()` gives each request its own
    `TokenConstraint`. Made by `json_schema`, `json_object`, `regex`, `choice`,
    `tool_calls` (cached: the same arguments give the same object)."""

    def __init__(self, root: Node, vocab: Vocab, description: str = ""):
        self.root, self.vocab, self.description = root, vocab, description
        self.initial = initial_threads(root)
        self._eos = torch.tensor(vocab.eos_ids, dtype=torch.long)
        self._tables: dict = {}  # RegexNode -> (its full DFA table or None, live bytes per state)
        self._margin: int | None = None
        self._shortest: str | None = None

    @property
    def min_bytes(self) -> int:
        """Bytes in the shortest complete output (so at most this many tokens)."""
        return threads_close(self.initial)

    def shortest(self) -> str:
        """A shortest complete output (cached)."""
        if self._shortest is None:
            self._shortest = shortest_output(self.initial).decode()
        return self._shortest

    def min_tokens(self, tokenizer) -> int:
        """Tokens in the tokenizer's encoding of the shortest output: the least max_tokens
        a request with this grammar can be given."""
        return len(tokenizer.encode(self.shortest()))

    @property
    def margin(self) -> int:
        """How close (in tokens) the budget may come to the closing cost before every token
        is checked: the longest shortest-match of a grammar node plus MARGIN_SLACK, a
        bound on how far one token usually pushes the closing cost up (entering a node);
        a heuristic, not a proof: a token that both enters and opens deeply could
        exceed it."""
        if self._margin is None:
            self._margin = max_single_step(self.root) + MARGIN_SLACK
        return self._margin

    def __repr__(self) -> str:
        return f"Grammar({self.description})"

    def start(self) -> TokenConstraint:
        return TokenConstraint(self)

    def thread_mask(self, thread: tuple) -> torch.Tensor:
        """bool [V]: the tokens this thread can consume (never EOS); cached."""
        v = self.vocab
        return v.cached(v.masks, thread, lambda: self._compute_mask(thread), MASK_CACHE_SIZE)

    def _compute_mask(self, thread: tuple) -> torch.Tensor:
        v = self.vocab
        if not thread:
            return torch.zeros(v.size, dtype=torch.bool)
        node, local = thread[-1]
        if isinstance(node, Seq):  # its next child starts at the next byte: mask that
            waiting = thread[:-1] + ((node, local + 1),)
            masks = [self.thread_mask(waiting + (f,)) for f in node.children[local].enter()]
            return functools.reduce(torch.logical_or, masks)
        ids: list[int] = []
        if isinstance(node, MarkerText):
            return self._marker_mask(thread, node, local)
        if isinstance(node, RegexNode) and len(thread) == 1:
            table, fanout = self._dfa_table(node)
            if table is not None and fanout[local] > DFA_MASK_FANOUT:
                return dfa_mask(v.token_matrix(), table, local, v.size)
            node.walk(v.trie, local, ids)  # few next bytes: the walk prunes early, faster
            return v.ids_to_mask(ids)
        if isinstance(node, Str) and node.is_free_body(local):
            base = v.string_body
            if node.max_len is not None:
                base = base & (v.string_chars <= node.max_len - local[1])
            walk(v.rest_trie, [thread], ids)
            return v.ids_to_mask(ids, base)
        walk(v.trie, [thread], ids)
        return v.ids_to_mask(ids)

    def _dfa_table(self, node: RegexNode) -> tuple[torch.Tensor | None, list[int]]:
        """The pattern's full DFA table (None if too large) and each state's live bytes."""
        if node not in self._tables:
            table = full_table(node)
            fanout = [] if table is None else (table[:-1] != len(table) - 1).sum(1).tolist()
            self._tables[node] = table, fanout
        return self._tables[node]

    def _marker_mask(self, thread: tuple, node: MarkerText, k: int) -> torch.Tensor:
        """Any token, except those in which the marker completes: the text-only thread
        takes none of them, the other takes those whose rest continues the call."""
        v, n = self.vocab, len(node.marker)
        completing = []
        for i in v.ids_with_byte(node.marker[-1]):
            s = k
            for b in v.token_bytes[i]:
                s = node.next[s][b]
                if s == n:
                    completing.append(i)
                    break
        mask = v.text_mask.clone()
        mask[completing] = False
        if not node.text_only:
            mask[[i for i in completing if self._takes(thread, v.token_bytes[i])]] = True
        return mask

    @staticmethod
    def _takes(thread: tuple, data: bytes) -> bool:
        threads = [thread]
        for b in data:
            threads = step_all(threads, b)
            if not threads:
                return False
        return True

    def matches(self, text: str) -> bool:
        """Is text a complete output of this grammar?

        >>> g.matches('{"a": 1}')                                       # doctest: +SKIP
        True
        """
        threads = self.initial
        for b in text.encode():
            threads = step_all(threads, b)
            if not threads:
                return False
        return any(accepting(t) for t in threads)


class TokenConstraint:
    """One request's position in a grammar: which tokens may come next, and the text so far.

    allowed(remaining) is a bool [vocab_size] mask (remaining: see allowed); advance(token_id)
    takes the sampled token
    (ValueError if the mask forbids it); done says the output is complete and nothing may
    follow, so generation must stop. After an EOS token (allowed only when the output is
    complete) the constraint is done too."""

    budget_aware = True  # the engine passes allowed() the tokens left (constrain_step.py)

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self._threads = grammar.initial
        self._bytes = bytearray()
        self._ended = False

    @property
    def complete(self) -> bool:
        """The output may end here (EOS is allowed), though more may follow."""
        return self._ended or any(accepting(t) for t in self._threads)

    @property
    def done(self) -> bool:
        return self._ended or all(not t for t in self._threads)

    def allowed(self, remaining: int | None = None) -> torch.Tensor:
        """bool [V]: the tokens that may come next. With remaining (the tokens this request
        may still generate, this one included), only tokens after which a complete output is
        reachable within the rest of the budget, once the budget is close to the shortest
        completion (budget.py); with no such token (a budget already too small), those
        closest to a complete output."""
        g = self.grammar
        if self.done:  # only EOS may follow a finished output
            mask = torch.zeros(g.vocab.size, dtype=torch.bool)
            mask[g._eos] = not self._ended
            return mask
        masks = [g.thread_mask(t) for t in self._threads]
        mask = masks[0].clone()  # the cached masks stay untouched whatever the caller does
        for m in masks[1:]:
            mask |= m
        if self.complete:
            mask[g._eos] = True
        if remaining is not None:
            mask = self._within(mask, remaining)
        return mask

    def _within(self, mask: torch.Tensor, remaining: int) -> torch.Tensor:
        g = self.grammar
        left = remaining - 1  # tokens after this one
        if left >= threads_close(self._threads) + g.margin:
            return mask
        vecs = [cost_vector(g, t) for t in self._threads]
        if all(top <= left for _, top in vecs):  # every allowed token leaves enough room
            return mask
        cost = functools.reduce(torch.minimum, [c for c, _ in vecs])
        keep = cost <= left
        if not keep.any():
            keep = cost == cost.min()
        mask &= keep
        if self.complete:
            mask[g._eos] = True
        return mask

    def advance(self, token_id: int) -> None:
        v = self.grammar.vocab
        token_id = int(token_id)
        if self.done:
            raise ValueError(f"token {token_id} after the end of a complete output")
        if token_id in v.eos_ids:
            if not self.complete:
                raise ValueError(f"end of text (token {token_id}) before the output is complete: {self.text()!r}")
            self._ended = True
            return
        data = v.token_bytes[token_id] if 0 <= token_id < v.size else None
        if data is None:
            raise ValueError(f"token {token_id} is a special or unknown token, not allowed here")
        threads = self._threads
        for b in data:
            threads = step_all(threads, b)
            if not threads:
                raise ValueError(f"token {token_id} ({data!r}) does not continue {self.text()!r}")
        self._threads = threads
        self._bytes += data

    def text(self) -> str:
        """The output so far (an unfinished UTF-8 character at the end is held back)."""
        return codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(self._bytes))
