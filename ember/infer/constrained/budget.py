"""Budget-aware closing: how many bytes the shortest valid completion needs from a
matcher state, and which tokens keep a valid completion within the tokens left.

`close(node, local)` is the fewest bytes that take one frame from state `local` to its
end (the frames below it excluded); a thread's closing cost is the sum over its frames
(`thread_close`), and `min_len(node)` is a whole node's shortest match. Every byte is a
token of a byte-level BPE vocabulary, so a completion of k bytes fits in k tokens: a
constraint with R tokens left that allows only tokens after which some thread closes in
at most R - 1 bytes always reaches a complete output by the last token.

`cost_vector(grammar, thread)` is, per token, the closing cost of the thread after the
token (`BIG` where the token is not allowed); it is cached per thread like the masks.

>>> from ember.infer.constrained.json_nodes import Arr, Num, Obj
>>> node = Obj([("a", Arr(Num(), min_items=2), True)])
>>> min_len(node)  # {"a":[0,0]}
11
>>> close(node, ("after", 1))  # only `}` is left
1
"""

from __future__ import annotations

import functools
from collections import deque

import torch

from .json_nodes import BODY, ESCAPE, UHEX, UTF8, Arr, Num, Obj, Str
from .nodes import Alt, Lit, LitSet, MarkerText, Node, Opt, Ref, Repeat, Seq, step_all, walk
from .regex_dfa import RegexNode
from .vocab import COST_CACHE_SIZE

BIG = 1 << 30  # "cannot complete" (a recursive node whose every path recurses)
_NUM_ACCEPTING = frozenset((2, 3, 5, 8))  # Num's _ZERO, _INT, _FRAC, _EXP


def min_len(node: Node) -> int:
    """Bytes in the shortest text that node matches (memoized on the node)."""
    memo = node.__dict__.get("_min_len")
    if memo is not None:
        return memo
    node._min_len = BIG  # a recursion back here finds no finite path through this node
    if isinstance(node, Alt):
        value = min((min_len(o) for o in node.options), default=BIG)
    elif isinstance(node, Ref):
        value = min_len(node.target)
    elif isinstance(node, RegexNode):
        value = close(node, node.start)
    else:
        value = min(close(node, local) for _, local in node.enter())
    node._min_len = value = min(value, BIG)
    return value


def _sum(*xs: int) -> int:
    return min(sum(xs), BIG)


def close(node: Node, local) -> int:
    """Fewest bytes from frame state local to the frame's end (memoized per node)."""
    memo = node.__dict__.get("_close")
    if memo is None:
        memo = node._close = {}
    value = memo.get(local)
    if value is None:
        value = memo[local] = _close(node, local)
    return value


def _close(node: Node, local) -> int:
    if isinstance(node, Lit):
        return len(node.data) - local
    if isinstance(node, Str):
        return _str_close(node, local)
    if isinstance(node, Num):
        return 0 if local[0] in _NUM_ACCEPTING else 1
    if isinstance(node, Obj):
        return _obj_close(node, local)
    if isinstance(node, Arr):
        return _arr_close(node, local)
    if isinstance(node, Seq):
        return _sum(*(min_len(c) for c in node.children[local:]))
    if isinstance(node, Repeat):
        return _repeat_close(node, local)
    if isinstance(node, Opt):
        return 0
    if isinstance(node, MarkerText):
        return 0 if node.text_only else len(node.marker) - local
    if isinstance(node, LitSet):
        return _litset_dist(node)[local]
    if isinstance(node, RegexNode):
        return _regex_dist(node, local)
    raise TypeError(f"no closing cost for {node!r}")


def _str_close(node: Str, local) -> int:
    phase = local[0]
    if phase == 0:
        return 2 + node.min_len
    need = 1 + max(0, node.min_len - local[1])
    if phase == BODY:
        return need
    if phase == ESCAPE:
        return 1 + need
    if phase == UHEX:
        return 4 - local[2] + need
    assert phase == UTF8
    return local[2] + need


def _obj_tables(node: Obj) -> tuple[list[int], list[int]]:
    """after[idx]: bytes to end from after a value (next property idx); need[idx]: bytes to
    end when a property from candidates[idx] must come next (after a comma)."""
    t = node.__dict__.get("_budget")
    if t is not None:
        return t
    n = len(node.keys)
    after, need = [BIG] * (n + 1), [BIG] * (n + 1)
    for idx in range(n, -1, -1):
        need[idx] = min((_sum(len(node.keys[j]), 1, min_len(node.props[j][1]), after[j + 1])
                         for j in node.candidates[idx]), default=BIG)
        after[idx] = min(1 if node.can_close[idx] else BIG, _sum(1, need[idx]))
    node._budget = after, need
    return after, need


def _obj_close(node: Obj, local) -> int:
    ph = local[0]
    if node.props is None:
        pair = _sum(min_len(node.free_key), 1, min_len(node.extra))
        return {0: 2, "key": 1, ",": pair + 1, ",s": pair + 1, ":": 1 + min_len(node.extra) + 1,
                "v": min_len(node.extra) + 1, "vs": min_len(node.extra) + 1, "after": 1}[ph]
    after, need = _obj_tables(node)
    if ph == 0:
        return _sum(1, min(1 if node.can_close[0] else BIG, need[0]))
    if ph == "key":
        return min(1 if node.can_close[local[1]] else BIG, need[local[1]])
    if ph in (",", ",s"):
        return need[local[1]]
    if ph == "after":
        return after[local[1]]
    j = local[1]
    rest = _sum(min_len(node.props[j][1]), after[j + 1])
    if ph == "k":
        return _sum(len(node.keys[j]) - local[2], 1, rest)
    return _sum(1, rest) if ph == ":" else rest  # "v", "vs"


def _arr_close(node: Arr, local) -> int:
    item = min_len(node.item)
    ph = local[0]
    if ph == 0:
        return _sum(1, _arr_close(node, ("open",)))
    if ph == "open":
        if node.min_items == 0:
            return 1
        return _sum(item, (node.min_items - 1) * (1 + item), 1)
    n = local[1]
    if ph == "after":
        return _sum(max(0, node.min_items - n) * (1 + item), 1)
    return _sum(item, max(0, node.min_items - n - 1) * (1 + item), 1)  # "," or ",s"


def _repeat_close(node: Repeat, local) -> int:
    n, j = local
    unit = _sum(len(node.sep), min_len(node.child))
    if j == 0:
        return min(max(0, node.lo - n) * unit, BIG)
    due = _sum(min_len(node.child), max(0, node.lo - n - 1) * unit)
    return due if j < 0 else _sum(len(node.sep) - j, due)


def _litset_dist(node: LitSet) -> list[int]:
    """Per trie node, the bytes to the nearest value end below it."""
    d = node.__dict__.get("_dist")
    if d is None:
        d = [BIG] * len(node.children)
        for i in range(len(node.children) - 1, -1, -1):  # children have larger indices
            d[i] = min((1 if node.ends[c] else 1 + d[c] for c in node.children[i].values()), default=BIG)
        node._dist = d
    return d


def _regex_dist(node: RegexNode, local: int) -> int:
    """Fewest bytes from DFA state local to acceptance: a 0-1 BFS over the NFA."""
    memo = node.__dict__.setdefault("_dist", {})
    if local in memo:
        return memo[local]
    dist = {s: 0 for s in node.sets[local]}
    todo = deque(node.sets[local])
    best = BIG
    while todo:
        s = todo.popleft()
        if s == node.accept:
            best = dist[s]
            break
        for t in node.nfa.eps[s]:
            if dist.get(t, BIG) > dist[s]:
                dist[t] = dist[s]
                todo.appendleft(t)
        for _, _, t in node.nfa.edges[s]:
            if dist.get(t, BIG) > dist[s] + 1:
                dist[t] = dist[s] + 1
                todo.append(t)
    memo[local] = best
    return best


def thread_close(thread: tuple) -> int:
    """Fewest bytes that complete the output from this thread (0: it may end here)."""
    return min(sum(close(node, local) for node, local in thread), BIG)


def threads_close(threads) -> int:
    return min((thread_close(t) for t in threads), default=BIG)


def shortest_output(threads) -> bytes:
    """The bytes of a shortest completion from these threads (b"" if they may end here);
    ValueError if none is finite."""
    out = bytearray()
    c = threads_close(threads)
    if c >= BIG:
        raise ValueError("the grammar has no finite output")
    while c > 0:
        for b in range(256):
            nxt = step_all(threads, b)
            if nxt and threads_close(nxt) == c - 1:
                out.append(b)
                threads, c = nxt, c - 1
                break
        else:  # unreachable when the costs are exact
            raise RuntimeError(f"no byte shortens the output after {bytes(out)!r}")
    return bytes(out)


def _walk_costs(trie: dict, threads: list[tuple], ids: list[int], costs: list[int]) -> None:
    """nodes.walk, also recording each reached token's closing cost."""
    memo: dict = {}

    def reached(here: list[int], nxt: list[tuple]) -> None:
        c = min(memo[t] if t in memo else memo.setdefault(t, thread_close(t)) for t in nxt)
        costs.extend([c] * len(here))

    walk(trie, threads, ids, reached)


def _scatter(size: int, ids: list[int], costs: list[int], base: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.full((size,), BIG, dtype=torch.int32) if base is None else base.clone()
    if ids:
        idx = torch.tensor(ids, dtype=torch.long)
        out[idx] = torch.minimum(out[idx], torch.tensor(costs, dtype=torch.int32))
    return out


def cost_vector(grammar, thread: tuple) -> tuple[torch.Tensor, int]:
    """(int32 [V]: per token, the closing cost of this thread after it (BIG: not allowed),
    the largest finite cost in it), cached per thread."""
    v = grammar.vocab

    def make():
        cost = _compute_costs(grammar, thread)
        finite = cost[cost < BIG]
        return cost, int(finite.max()) if len(finite) else -1

    return v.cached(v.costs, thread, make, COST_CACHE_SIZE)


def _compute_costs(grammar, thread: tuple) -> torch.Tensor:
    v = grammar.vocab
    if not thread:
        return torch.full((v.size,), BIG, dtype=torch.int32)
    node, local = thread[-1]
    below = sum(close(n, loc) for n, loc in thread[:-1])
    if isinstance(node, Seq):
        waiting = thread[:-1] + ((node, local + 1),)
        vecs = [cost_vector(grammar, waiting + (f,))[0] for f in node.children[local].enter()]
        return functools.reduce(torch.minimum, vecs)
    if isinstance(node, MarkerText):  # the text goes on at no cost, or a completing token
        mask = grammar.thread_mask(thread)
        if node.text_only:
            return torch.where(mask, torch.tensor(below), torch.tensor(BIG))
        ids = [i for i in mask.nonzero().flatten().tolist() if _completes(node, local, v.token_bytes[i])]
        return _token_costs(grammar, thread, ids)
    if isinstance(node, Str) and node.is_free_body(local):
        base = torch.full((v.size,), BIG, dtype=torch.int32)
        ok = grammar.thread_mask(thread) & v.string_body
        left = (node.min_len - local[1] - v.string_chars).clamp(min=0) if node.counted else 0
        base[ok] = (below + 1 + left)[ok] if node.counted else below + 1
        ids, costs = [], []
        _walk_costs(v.rest_trie, [thread], ids, costs)
        return _scatter(v.size, ids, costs, base)
    if isinstance(node, RegexNode) and len(thread) == 1:
        table, _ = grammar._dfa_table(node)
        if table is not None:
            return _regex_costs(grammar, node, table, local)
    ids, costs = [], []
    _walk_costs(v.trie, [thread], ids, costs)
    return _scatter(v.size, ids, costs)


def _completes(node: MarkerText, k: int, data: bytes) -> bool:
    for b in data:
        k = node.next[k][b]
        if k == len(node.marker):
            return True
    return False


def _token_costs(grammar, thread: tuple, ids: list[int]) -> torch.Tensor:
    costs = []
    for i in ids:
        threads = [thread]
        for b in grammar.vocab.token_bytes[i]:
            threads = step_all(threads, b)
        costs.append(threads_close(threads))
    return _scatter(grammar.vocab.size, ids, costs)


def _regex_costs(grammar, node: RegexNode, table: torch.Tensor, local: int) -> torch.Tensor:
    """A regex alone, on its full DFA table: every token's end state at once."""
    v = grammar.vocab
    tokens = v.token_matrix()
    dead = table.shape[0] - 1
    states = torch.full((len(tokens.ids),), local, dtype=torch.long)
    for p, n in enumerate(tokens.counts):
        states[:n] = table[states[:n], tokens.data[:n, p]]
    dist = torch.tensor([_regex_dist(node, s) if s < len(node.sets) else BIG for s in range(dead)] + [BIG],
                        dtype=torch.int32)
    out = torch.full((v.size,), BIG, dtype=torch.int32)
    out[tokens.ids] = dist[states]
    return out


def max_single_step(root: Node, limit: int = 4096) -> int:
    """The largest shortest-match length of any node reachable from root (free values
    built lazily are not forced): a bound on how far one token can push the closing cost
    up, used as the margin before the budget check starts."""
    seen, todo, best = set(), [root], 0
    while todo and len(seen) < limit:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        m = min_len(node)
        if m < BIG:
            best = max(best, m)
        kids = list(node.children) if isinstance(node, Seq) else list(getattr(node, "options", []))
        for attr in ("child", "item", "target", "extra", "free_key"):
            k = getattr(node, attr, None)
            if isinstance(k, Node):
                kids.append(k)
        if isinstance(node, Obj):
            kids += [p[1] for p in node.props or []]
        todo.extend(kids)
    return best
