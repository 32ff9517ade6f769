"""JSON values as matcher nodes: strings, numbers, objects, arrays and any value.

Whitespace is bounded so a small model cannot wander: none anywhere except one optional
space after `:` and after `,` (`{"a": 1, "b": [1, 2]}` and `{"a":1,"b":[1,2]}` both match).
Numbers are bounded too (at most 15 integer digits, 15 fraction digits, 3 exponent
digits); strings are bounded only by `maxLength` but can always be closed.

Strings are matched as UTF-8 bytes with exact lead/continuation ranges (no overlong forms,
no surrogates), so a token that ends inside a character is fine and the output always
decodes. A string's local state is `(phase, nchars, ...)`; nchars is counted only when
the schema bounds the length, so an unbounded string stays in one state and its mask is
computed once.

>>> from ember.infer.constrained.nodes import initial_threads, step_all, accepting
>>> th = initial_threads(Num(integer=True))
>>> for ch in b"-12": th = step_all(th, ch)
>>> [accepting(t) for t in th]
[True]
"""

from __future__ import annotations

from .nodes import CALL, DONE, STAY, Alt, Lit, Node

QUOTE, BSLASH, COLON, COMMA, SPACE = (ord(c) for c in '"\\:, ')
MAX_INT_DIGITS, MAX_FRAC_DIGITS, MAX_EXP_DIGITS = 15, 15, 3
MAX_FREE_DEPTH = 6  # nesting of objects/arrays inside a free (schema-less) value

# UTF-8 lead byte -> (continuation bytes, allowed range of the first continuation byte)
_LEAD = {}
for _b in range(0xC2, 0xE0):
    _LEAD[_b] = (1, 0x80, 0xBF)
for _b in range(0xE0, 0xF0):
    _LEAD[_b] = (2, 0xA0 if _b == 0xE0 else 0x80, 0x9F if _b == 0xED else 0xBF)
for _b in range(0xF0, 0xF5):
    _LEAD[_b] = (3, 0x90 if _b == 0xF0 else 0x80, 0x8F if _b == 0xF4 else 0xBF)
_ESCAPES = frozenset(b'"\\/bfnrt')
_HEX = frozenset(b"0123456789abcdefABCDEF")
BODY, ESCAPE, UTF8, UHEX = 1, 2, 3, 4  # string phases (0: before the opening quote)


class Str(Node):
    """A JSON string. local: (0,) before `"`; (BODY, n); (ESCAPE, n); (UHEX, n, k);
    (UTF8, n, pending, lo, hi). n counts characters only if the length is bounded."""

    start = (0,)

    def __init__(self, min_len: int = 0, max_len: int | None = None):
        self.min_len, self.max_len = min_len, max_len
        self.counted = min_len > 0 or max_len is not None

    def step(self, local, b):
        phase = local[0]
        if phase == 0:
            return [(STAY, (BODY, 0))] if b == QUOTE else []
        n = local[1]
        if phase == BODY:
            if b == QUOTE:
                return [(DONE,)] if n >= self.min_len else []
            if self.counted:
                if self.max_len is not None and n >= self.max_len:
                    return []
                n += 1
            if b == BSLASH:
                return [(STAY, (ESCAPE, n))]
            if b < 0x20:
                return []
            if b < 0x80:
                return [(STAY, (BODY, n))]
            lead = _LEAD.get(b)
            return [(STAY, (UTF8, n, *lead))] if lead else []
        if phase == UTF8:
            _, _, pending, lo, hi = local
            if not lo <= b <= hi:
                return []
            return [(STAY, (BODY, n) if pending == 1 else (UTF8, n, pending - 1, 0x80, 0xBF))]
        if phase == ESCAPE:
            if b == ord("u"):
                return [(STAY, (UHEX, n, 0))]
            return [(STAY, (BODY, n))] if b in _ESCAPES else []
        k = local[2]  # UHEX
        if b not in _HEX:
            return []
        return [(STAY, (BODY, n) if k == 3 else (UHEX, n, k + 1))]

    def is_free_body(self, local) -> bool:
        """In the body, outside any escape or multi-byte character: every byte string
        without `"`, `\\` or control bytes continues it (the vocabulary's fast path)."""
        return local[0] == BODY


# Number DFA states; the limits count digits in each part.
_START, _MINUS, _ZERO, _INT, _DOT, _FRAC, _E, _ESIGN, _EXP = range(9)
_DIGITS = frozenset(b"0123456789")


class Num(Node):
    """A JSON number (an integer if integer=True). local: (dfa state, digits in part)."""

    start = (_START, 0)

    def __init__(self, integer: bool = False):
        self.integer = integer

    def step(self, local, b):
        s, k = local
        digit = b in _DIGITS
        if s in (_START, _MINUS):
            if digit:
                return [(STAY, (_ZERO, 1) if b == 0x30 else (_INT, 1))]
            return [(STAY, (_MINUS, 0))] if s == _START and b == ord("-") else []
        if s == _INT and digit:
            return [(STAY, (_INT, k + 1))] if k < MAX_INT_DIGITS else []
        if s in (_ZERO, _INT) and not self.integer:
            if b == ord("."):
                return [(STAY, (_DOT, 0))]
            if b in b"eE":
                return [(STAY, (_E, 0))]
            return []
        if s in (_DOT, _FRAC) and digit:
            return [(STAY, (_FRAC, k + 1))] if k < MAX_FRAC_DIGITS else []
        if s == _FRAC and b in b"eE":
            return [(STAY, (_E, 0))]
        if s == _E and b in b"+-":
            return [(STAY, (_ESIGN, 0))]
        if s in (_E, _ESIGN, _EXP) and digit:
            return [(STAY, (_EXP, k + 1))] if k < MAX_EXP_DIGITS else []
        return []

    def accepting(self, local):
        return local[0] in (_ZERO, _INT, _FRAC, _EXP)


class Obj(Node):
    """A JSON object. props: [(key, value node, required)] in the order they must appear
    (optional ones may be skipped); with props None, any keys with `extra` values.

    local: (0,) before `{`; ("key", idx) a key may start (idx = first property not yet
    passed); ("k", j, p) p bytes of key j matched; (":", j); ("v", j) after the colon;
    ("vs", j) after the colon and a space; ("after", idx) after a value; (",", idx) after
    a comma; (",s", idx) after a comma and a space. j = -1 for a free key."""

    start = (0,)

    def __init__(self, props: list[tuple[str, Node, bool]] | None, extra: Node | None = None):
        import json

        self.props = props
        self.keys = [json.dumps(k, ensure_ascii=False).encode() for k, _, _ in props or []]
        self.extra = extra
        self.free_key = Str()
        n = len(self.keys)
        # candidates[idx]: the properties that may come next (up to the first required one)
        self.candidates = []
        for idx in range(n + 1):
            c = []
            for j in range(idx, n):
                c.append(j)
                if props[j][2]:
                    break
            self.candidates.append(c)
        self.can_close = [not any(p[2] for p in (props or [])[idx:]) for idx in range(n + 1)]

    def _key_start(self, idx, b):
        if self.props is None:
            return [(CALL, (":", -1), self.free_key)]
        return [
            (STAY, (":", j) if len(self.keys[j]) == 1 else ("k", j, 1))
            for j in self.candidates[idx]
            if self.keys[j][0] == b
        ]

    def _value(self, j):
        return self.extra if j < 0 else self.props[j][1]

    def step(self, local, b):
        ph = local[0]
        if ph == 0:
            return [(STAY, ("key", 0))] if b == ord("{") else []
        if ph == "key" or ph == ",s":
            idx = local[1]
            if ph == "key" and b == ord("}") and self._closable(idx):
                return [(DONE,)]
            return self._key_start(idx, b)
        if ph == "k":
            _, j, p = local
            if self.keys[j][p] != b:
                return []
            return [(STAY, (":", j) if p + 1 == len(self.keys[j]) else ("k", j, p + 1))]
        if ph == ":":
            return [(STAY, ("v", local[1]))] if b == COLON else []
        if ph == "v" and b == SPACE:
            return [(STAY, ("vs", local[1]))]
        if ph in ("v", "vs"):
            j = local[1]
            return [(CALL, ("after", -1 if j < 0 else j + 1), self._value(j))]
        if ph == "after":
            idx = local[1]
            if b == ord("}") and self._closable(idx):
                return [(DONE,)]
            if b == COMMA and (self.props is None or self.candidates[idx]):
                return [(STAY, (",", idx))]
            return []
        if ph == ",":
            if b == SPACE:
                return [(STAY, (",s", local[1]))]
            return self._key_start(local[1], b)
        return []

    def _closable(self, idx):
        return self.props is None or self.can_close[idx]


class Arr(Node):
    """A JSON array of `item`, with min_items..max_items entries. local: (0,) before `[`;
    ("open",); ("after", n) after n items; (",", n); (",s", n)."""

    start = (0,)

    def __init__(self, item: Node, min_items: int = 0, max_items: float = float("inf")):
        self.item, self.min_items, self.max_items = item, min_items, max_items

    def step(self, local, b):
        ph = local[0]
        if ph == 0:
            return [(STAY, ("open",))] if b == ord("[") else []
        if ph == "open":
            if b == ord("]"):
                return [(DONE,)] if self.min_items == 0 else []
            return [(CALL, ("after", 1), self.item)] if self.max_items > 0 else []
        n = local[1]
        if ph == "after":
            if b == ord("]"):
                return [(DONE,)] if n >= self.min_items else []
            return [(STAY, (",", n))] if b == COMMA and n < self.max_items else []
        if ph == "," and b == SPACE:
            return [(STAY, (",s", n))]
        return [(CALL, ("after", n + 1), self.item)]


def literal(value) -> Lit:
    """A JSON value written out as one literal (enum and const entries)."""
    import json

    return Lit(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")).encode())


def any_value(depth: int = 0) -> Node:
    """Any JSON value, objects and arrays nested at most MAX_FREE_DEPTH deep."""
    scalars: list[Node] = [Str(), Num(), Lit(b"true"), Lit(b"false"), Lit(b"null")]
    if depth >= MAX_FREE_DEPTH:
        return Alt(scalars)
    return _LazyAny(scalars, depth)


class _LazyAny(Alt):
    """Builds its nested object/array alternatives on first use (a free value would
    otherwise build MAX_FREE_DEPTH levels up front)."""

    def __init__(self, scalars, depth):
        super().__init__(scalars)
        self.depth, self.built = depth, False

    def enter(self):
        if not self.built:
            inner = any_value(self.depth + 1)
            self.options = self.options + [Obj(None, inner), Arr(inner)]
            self.built = True
        return super().enter()
