"""The byte-level pushdown matcher that every constraint compiles to.

A grammar is a graph of nodes; the matcher's state is a set of *threads* (an NFA over
stacks, so `anyOf`, enums and key choices that share a prefix need no lookahead), and a
thread is a stack: a tuple of frames `(node, local)`, top last. Feeding one byte to a
thread asks the top node what it does with it:

- `(STAY, local)`: the frame consumed the byte and is now in state `local`;
- `(DONE,)`: the frame consumed the byte and is complete (it is popped);
- `(CALL, resume, child)`: the frame waits in state `resume` while `child` (pushed on top)
  is fed the same byte.

A frame whose `accepting(local)` holds may also be popped without consuming anything (a
number ends where a `,` begins), and a frame whose `final(local)` holds is popped at once
(nothing more can come from it). A thread that becomes the empty tuple has matched the
whole grammar and can take nothing more. States are tuples of ints and node objects, so
they hash: masks are cached per thread (`grammar.py`).

Everything works on bytes, so a token may end in the middle of a UTF-8 character or span
several JSON pieces (`"},`): the matcher simply takes its bytes one at a time.

>>> lit = Lit(b"ab")
>>> step_all([(lit.enter()[0],)], ord("a"))
[((Lit(b'ab'), 1),)]
>>> step_all(step_all([(lit.enter()[0],)], ord("a")), ord("b"))
[()]
"""

from __future__ import annotations

STAY, DONE, CALL = 0, 1, 2
MAX_THREADS = 256  # a guard against pathological ambiguity (e.g. anyOf of many look-alikes)


class Node:
    """A grammar node. Subclasses define `step`; nodes are compared by identity."""

    def enter(self) -> list[tuple]:
        """The frames that start matching this node (several for an alternative)."""
        return [(self, self.start)]

    start: object = 0
    nullable = False  # may match nothing (then a Seq may end before it)

    def step(self, local, b: int) -> list[tuple]:
        raise NotImplementedError

    def accepting(self, local) -> bool:
        return False

    def final(self, local) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Lit(Node):
    """An exact byte string (a key, `true`, an enum value)."""

    def __init__(self, data: bytes):
        if not data:
            raise ValueError("a literal must not be empty")
        self.data = data

    def step(self, i, b):
        if self.data[i] != b:
            return []
        return [(DONE,)] if i + 1 == len(self.data) else [(STAY, i + 1)]

    def __repr__(self) -> str:
        return f"Lit({self.data!r})"


class LitSet(Node):
    """One of several byte strings (an enum), as a trie: one thread however many values.
    local = index of the trie node reached; a value that is a prefix of another both ends
    (DONE) and continues."""

    def __init__(self, values: list[bytes]):
        if not values or not all(values):
            raise ValueError("a literal set needs non-empty values")
        self.children: list[dict[int, int]] = [{}]
        self.ends: list[bool] = [False]
        for v in values:
            i = 0
            for b in v:
                if b not in self.children[i]:
                    self.children[i][b] = len(self.children)
                    self.children.append({})
                    self.ends.append(False)
                i = self.children[i][b]
            self.ends[i] = True

    def step(self, i, b):
        j = self.children[i].get(b)
        if j is None:
            return []
        acts = [(DONE,)] if self.ends[j] else []
        return acts + [(STAY, j)] if self.children[j] else acts


class Alt(Node):
    """One of several nodes: entering it enters each (one thread per alternative)."""

    def __init__(self, options: list[Node]):
        if not options:
            raise ValueError("an alternative needs at least one option")
        self.options = options

    def enter(self):
        return [f for o in self.options for f in o.enter()]


class Ref(Node):
    """A node defined later (a `$ref`, a recursive value): enters its target."""

    def __init__(self):
        self.target: Node | None = None
        self._entering = False

    def enter(self):
        if self._entering:  # e.g. {"anyOf": [{"$ref": "#"}, ...]}: a loop that reads no input
            raise ValueError("a $ref refers back to itself before any input is read")
        self._entering = True
        try:
            return self.target.enter()
        finally:
            self._entering = False


class Seq(Node):
    """Its children one after another; local = index of the next child."""

    def __init__(self, children: list[Node]):
        self.children = children

    def step(self, i, b):
        return [(CALL, i + 1, self.children[i])]

    def accepting(self, i):
        return all(c.nullable for c in self.children[i:])

    def final(self, i):
        return i == len(self.children)


class Repeat(Node):
    """child (sep child)*, between lo and hi times; local = (items done, sep bytes matched),
    with sep matched -1 while an item is due."""

    def __init__(self, child: Node, sep: bytes, lo: int = 1, hi: float = float("inf")):
        self.child, self.sep, self.lo, self.hi = child, sep, lo, hi
        self.start = (0, -1)

    def step(self, local, b):
        n, j = local
        if j < 0:
            return [(CALL, (n + 1, 0), self.child)]
        if n >= self.hi or self.sep[j] != b:
            return []
        return [(STAY, (n, -1) if j + 1 == len(self.sep) else (n, j + 1))]

    def accepting(self, local):
        return local[1] == 0 and local[0] >= self.lo

    def final(self, local):
        return local[1] == 0 and local[0] >= self.hi


class MarkerText(Node):
    """Free text watched for `marker` (tool_choice auto's `<tool_call>`). local: the KMP
    state, the length of the longest suffix of the text that begins the marker. When the
    marker completes, the text-only variant (`text_only`) dies, since what follows is a
    call that the other alternative checks, and the other variant ends (DONE) so that its
    parent goes on to the call."""

    def __init__(self, marker: bytes, text_only: bool):
        self.marker, self.text_only = marker, text_only
        fail = [0] * len(marker)  # the KMP prefix function
        for i in range(1, len(marker)):
            k = fail[i - 1]
            while k and marker[i] != marker[k]:
                k = fail[k - 1]
            fail[i] = k + (marker[i] == marker[k])
        self.next = [[0] * 256 for _ in marker]  # next[k][b]: the state after byte b
        for k in range(len(marker)):
            for b in range(256):
                if marker[k] == b:
                    self.next[k][b] = k + 1
                elif k:
                    self.next[k][b] = self.next[fail[k - 1]][b]

    def step(self, k, b):
        k = self.next[k][b]
        if k < len(self.marker):
            return [(STAY, k)]
        return [] if self.text_only else [(DONE,)]

    def accepting(self, k):
        return self.text_only


class Opt(Node):
    """Its child or nothing. local 0: not started; 1: the child is done."""

    nullable = True

    def __init__(self, child: Node):
        self.child = child

    def step(self, i, b):
        return [(CALL, 1, self.child)]

    def accepting(self, i):
        return True

    def final(self, i):
        return i == 1


def _normalize(stack: tuple) -> tuple:
    """Pop the frames that can take nothing more."""
    while stack and stack[-1][0].final(stack[-1][1]):
        stack = stack[:-1]
    return stack


def feed(stack: tuple, b: int, out: set) -> None:
    """Add to `out` every stack that `stack` becomes after consuming byte b."""
    if not stack:
        return
    node, local = stack[-1]
    base = stack[:-1]
    for act in node.step(local, b):
        kind = act[0]
        if kind == STAY:
            out.add(_normalize(base + ((node, act[1]),)) if node.final(act[1]) else base + ((node, act[1]),))
        elif kind == DONE:
            out.add(_normalize(base))
        else:
            waiting = base + ((node, act[1]),)
            for frame in act[2].enter():
                feed(waiting + (frame,), b, out)
    if base and node.accepting(local):  # end this frame here; the byte goes to the parent
        feed(_normalize(base), b, out)


def step_all(threads, b: int) -> list[tuple]:
    """Every thread after byte b (deduplicated; empty when b is not allowed)."""
    out: set = set()
    for t in threads:
        feed(t, b, out)
    if len(out) > MAX_THREADS:
        raise RuntimeError(f"the grammar is too ambiguous: {len(out)} live parses")
    return list(out)


def accepting(thread: tuple) -> bool:
    """Can the output end here (every open frame may stop without more input)?"""
    return all(node.accepting(local) for node, local in thread)


def initial_threads(root: Node) -> list[tuple]:
    return list({_normalize((f,)) for f in root.enter()})


def walk(trie: dict, threads: list[tuple], out: list[int], reached=None) -> None:
    """Append to out the ids of every token in trie that some thread can consume whole;
    `reached(ids, threads)`, when given, also sees each group of ids with the threads
    left after consuming them (budget.py records closing costs this way)."""
    todo = [(trie, threads)]
    while todo:
        node, ths = todo.pop()
        for b, child in node.items():
            if b is None:
                continue
            nxt = step_all(ths, b)
            if not nxt:
                continue
            ids = child.get(None)
            if ids:
                out.extend(ids)
                if reached is not None:
                    reached(ids, nxt)
            if len(child) > (ids is not None):
                todo.append((child, nxt))
