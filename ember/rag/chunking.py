"""Documents → chunks: token-counted, overlapping, split on structure first.

    text ─ sections (Markdown headings; Python class/def) ─ atoms (lines, sentences) ─ pack

1. **Sections.** A Markdown heading (outside code fences) starts a section whose heading
   path is the stack of headings above it (`("Install", "From source")`); a Python `class`
   or `def` at module or class level starts one too (`("class Store", "def bm25")`). A
   chunk never spans two sections, so its heading path is exact. A section that is only a
   heading joins the next one.
2. **Atoms.** A section is cut at its lines and sentence ends, each cut with a strength:
   paragraph (a blank line; a fenced code block is one paragraph) > sentence > line. An
   atom longer than the budget is cut at words, and a word longer than it at characters.
3. **Packing.** Atoms are packed greedily up to `chunk_tokens`; the chunk then ends at the
   strongest cut that keeps it at least half full. The next chunk starts `overlap` tokens
   earlier, on an atom boundary.

Tokens are counted by the caller's `count(text)` (the embedding model's own tokenizer,
specials excluded), so a chunk never gets truncated by the encoder. Spans are character
offsets into the document text with surrounding white space trimmed: `text[start:end]` is
the chunk.

Late chunking (Günther et al., 2024, "Late Chunking: Contextual Chunk Embeddings Using
Long-Context Embedding Models"): the encoder reads a window of several consecutive chunks
at once, and each chunk's vector is the mean of its own tokens' hidden states, so a chunk
that says "it" is embedded knowing what "it" is. MiniLM reads 256 tokens, so the window is
as many whole chunks as fit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PARAGRAPH, SENTENCE, LINE, WORD = 3, 2, 1, 0  # the strength of a cut after an atom
MIN_FILL = 0.5  # a chunk ends at a weaker cut rather than below half the budget

HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")
PY_DEF = re.compile(r"^([ \t]*)(?:async[ \t]+)?(def|class)[ \t]+(\w+)")
RST_MARKS = set("=-*~^\"'+#`:._")
SENTENCE_END = re.compile(r"(?<=[.!?])[ \t]+(?=\S)")


@dataclass(frozen=True)
class Span:
    """One chunk of a document: `text[start:end]`, its heading path and its token count."""

    start: int
    end: int
    headings: tuple[str, ...]
    n_tokens: int


def sections(text: str, kind: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, heading path) covering `text`, split at Markdown headings (markdown,
    html), Python class/def lines (python) or underlined reStructuredText headings (text).

    >>> sections("intro\\n# A\\nx\\n## B\\ny\\n", "markdown")
    [(0, 6, ()), (6, 12, ('A',)), (12, 19, ('A', 'B'))]
    """
    starts = {"markdown": _markdown_starts, "html": _markdown_starts, "python": _python_starts,
              "text": _rst_starts}
    cuts = starts[kind](text) if kind in starts else []
    if not cuts or cuts[0][0] != 0:
        cuts.insert(0, (0, ()))
    out = []
    for (s, path), (e, _) in zip(cuts, [*cuts[1:], (len(text), ())]):
        if out and out[-1][2] and not text[out[-1][0]:s].partition("\n")[2].strip():
            s = out.pop()[0]  # the previous section is only its heading: it joins this one
        out.append((s, e, path))
    return [x for x in out if x[1] > x[0]] or [(0, len(text), ())]


def _lines(text: str):
    pos = 0
    for line in text.splitlines(keepends=True):
        yield pos, line
        pos += len(line)


def _markdown_starts(text: str) -> list[tuple[int, tuple[str, ...]]]:
    out, stack, fence = [], [], None
    for pos, line in _lines(text):
        m = FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else fence or m.group(1)
            continue
        h = HEADING.match(line.rstrip("\r\n")) if fence is None else None
        if h:
            level = len(h.group(1))
            stack = [x for x in stack if x[0] < level] + [(level, h.group(2).strip())]
            out.append((pos, tuple(t for _, t in stack)))
    return out


def _rst_starts(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """A line underlined by one repeated punctuation character, as long as it, is a heading;
    levels follow the order in which underline characters first appear (as in docutils)."""
    out, stack, levels = [], [], []
    lines = list(_lines(text))
    for (pos, line), (_, under) in zip(lines, lines[1:]):
        title, mark = line.strip(), under.strip()
        if (len(mark) >= max(3, len(title)) and mark[0] in RST_MARKS and mark == mark[0] * len(mark)
                and title and not line[0].isspace() and not title.startswith(mark[0] * 3)):
            if mark[0] not in levels:
                levels.append(mark[0])
            level = levels.index(mark[0])
            stack = [x for x in stack if x[0] < level] + [(level, title)]
            out.append((pos, tuple(t for _, t in stack)))
    return out


def _python_starts(text: str) -> list[tuple[int, tuple[str, ...]]]:
    out, stack = [], []  # stack: (indent, "class X" / "def f")
    decorated = None  # where the decorators above the next def start
    for pos, line in _lines(text):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("@"):
            decorated = pos if decorated is None else decorated
            continue
        m = PY_DEF.match(line)
        if stripped and not m:
            decorated = None
            while stack and indent <= stack[-1][0] and not stripped.startswith(("#", ")", "]", "}")):
                stack.pop()
            continue
        if not m:
            continue
        while stack and indent <= stack[-1][0]:
            stack.pop()
        inside_def = any(name.startswith("def") for _, name in stack)
        stack.append((indent, f"{m.group(2)} {m.group(3)}"))
        if not inside_def:  # nested functions stay in their function's section
            out.append((decorated if decorated is not None else pos, tuple(n for _, n in stack)))
        decorated = None
    return out


def atoms(text: str, start: int, end: int) -> list[tuple[int, int, int]]:
    """(start, end, strength of the cut after it) covering text[start:end]: lines, and
    sentences inside lines; a fenced code block's blank lines are no paragraph breaks.

    >>> [(text[s:e], k) for text in ["One. Two\\nthree\\n\\nFour."] for s, e, k in atoms(text, 0, len(text))]
    [('One. ', 2), ('Two\\n', 1), ('three\\n\\n', 3), ('Four.', 3)]
    """
    out: list[tuple[int, int, int]] = []
    fence = None
    for pos, line in _lines(text[start:end]):
        pos += start
        m = FENCE.match(line)
        if m:
            fence = None if fence == m.group(1) else fence or m.group(1)
        if not line.strip() and out and fence is None:
            s, _, _ = out[-1]
            out[-1] = (s, pos + len(line), PARAGRAPH)  # blank lines ride with the atom before
            continue
        if not line.strip() and out:
            out[-1] = (out[-1][0], pos + len(line), out[-1][2])  # white space joins the atom before
            continue
        cuts = [pos] + [pos + m.end() for m in SENTENCE_END.finditer(line)] + [pos + len(line)]
        for a, b in zip(cuts, cuts[1:]):
            ended = text[a:b].rstrip().endswith((".", "!", "?", ":"))
            out.append((a, b, SENTENCE if ended else LINE))
    if out:
        out[-1] = (out[-1][0], out[-1][1], PARAGRAPH)
    return out


def _split_long(text: str, s: int, e: int, budget: int, count: Callable[[str], int]) -> list[tuple[int, int, int]]:
    """An atom over budget → word atoms; a word over budget → character pieces that fit."""
    out = []
    for m in re.finditer(r"\S+\s*", text[s:e]) if text[s:e].strip() else []:
        a, b = s + m.start(), s + m.end()
        while count(text[a:b]) > budget:
            lo, hi = a + 1, b  # the longest prefix that fits, by bisection
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if count(text[a:mid]) <= budget else (lo, mid - 1)
            out.append((a, lo, WORD))
            a = lo
        out.append((a, b, WORD))
    if out:
        out[0] = (s, out[0][1], WORD)  # leading white space rides with the first word
        out[-1] = (out[-1][0], e, WORD)
    return out or [(s, e, WORD)]


def chunk_text(text: str, kind: str, count: Callable[[str], int], chunk_tokens: int = 200,
               overlap: int = 32) -> list[Span]:
    """The chunks of one document, in order.

    >>> words = lambda s: len(s.split())
    >>> text = "# A\\nOne two three. Four five six.\\n\\n## B\\nSeven eight nine ten."
    >>> [(text[c.start:c.end], c.headings) for c in chunk_text(text, "markdown", words, 6, 0)]
    [('# A\\nOne two three.', ('A',)), ('Four five six.', ('A',)), ('## B\\nSeven eight nine ten.', ('A', 'B'))]
    """
    if chunk_tokens < 1 or not 0 <= overlap < chunk_tokens:
        raise ValueError(f"need chunk_tokens >= 1 and 0 <= overlap < chunk_tokens, got {chunk_tokens} and {overlap}")
    out: list[Span] = []
    for s, e, path in sections(text, kind):
        units = []
        for a, b, k in atoms(text, s, e):
            n = count(text[a:b])
            if n <= chunk_tokens:
                units.append((a, b, k, n))
            else:
                units += [(x, y, kk, count(text[x:y])) for x, y, kk in _split_long(text, a, b, chunk_tokens, count)]
                units[-1] = (*units[-1][:2], k, units[-1][3])
        out += _pack(text, units, path, count, chunk_tokens, overlap)
    return out


def _pack(text, units, path, count, budget, overlap) -> list[Span]:
    out: list[Span] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and total + units[j][3] <= budget:
            total += units[j][3]
            j += 1
        j = max(j, i + 1)
        if j < len(units):  # end at the strongest cut that keeps the chunk half full
            run = [sum(u[3] for u in units[i:m]) for m in range(i + 1, j + 1)]
            ok = [m for m in range(i + 1, j + 1) if run[m - i - 1] >= MIN_FILL * budget] or [j]
            j = max(ok, key=lambda m: (units[m - 1][2], m))
        while True:  # counted alone, atoms can join into more tokens than their sum
            a, b = _trim(text, units[i][0], units[j - 1][1])
            n = count(text[a:b]) if b > a else 0
            if n <= budget or j == i + 1:
                break
            j -= 1
        if b > a and out and a <= out[-1].start:
            out[-1] = Span(a, b, path, n)  # same start (atoms of no tokens between): the longer one
        elif b > a:
            out.append(Span(a, b, path, n))
        if j >= len(units):
            break
        k, back = j, 0
        while k - 1 > i and back + units[k - 1][3] <= overlap:
            k -= 1
            back += units[k][3]
        i = k
    return out


def _trim(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def late_chunk_vectors(embedder, text: str, spans: list[Span]) -> np.ndarray:
    """(len(spans), D) normalised float32 vectors: each window of consecutive chunks that
    fits the encoder is read at once; a chunk's vector is the mean of its tokens' hidden
    states. Needs the real `Embedder` (its model's `hidden`)."""
    import torch

    limit = embedder.max_tokens - 2
    # the text between consecutive chunk boundaries, tokenized piece by piece
    cuts = sorted({x for s in spans for x in (s.start, s.end)})
    pieces = [embedder.tokenize(text[a:b])[1:-1] for a, b in zip(cuts, cuts[1:])]
    at = np.cumsum([0] + [len(p) for p in pieces])
    pos = {c: k for k, c in enumerate(cuts)}
    out = np.zeros((len(spans), embedder.dim), np.float32)
    i = 0
    while i < len(spans):
        j = i + 1
        while j < len(spans) and at[pos[spans[j].end]] - at[pos[spans[i].start]] <= limit:
            j += 1
        first, last = pos[spans[i].start], pos[spans[j - 1].end]
        ids = embedder.wrap([t for p in pieces[first:last] for t in p][:limit])
        with torch.inference_mode():
            h = embedder.model.hidden(torch.tensor([ids]))[0].float()  # (T, D)
        for c in range(i, j):
            a = int(at[pos[spans[c].start]] - at[first]) + 1  # +1: the [CLS] in front
            b = min(int(at[pos[spans[c].end]] - at[first]) + 1, len(ids) - 1)
            v = h[a:max(b, a + 1)].mean(0)
            out[c] = (v / v.norm().clamp_min(1e-12)).numpy()
        i = j
    return out
