"""A small labelled task for probing a pre-trained encoder: is this sentence as written, or
were two of its words swapped? (label 1: as written, 0: swapped)

The sentences are prose from the bundled corpus (the pydoc topics and stdlib docstrings that
`ember pretrain` trains on). A swapped sentence holds exactly the words of a real one, so a
bag of words cannot tell them apart: the model needs each word in its context, which is what
pre-training an encoder should give. Each sentence appears once, as written or swapped (a
coin flip), so no pair of near-identical rows straddles the train/test split.

>>> rows = word_swap_rows(["The cat sat on the mat today, as it always does."], seed=0)
>>> rows[0].label in (0, 1), len(rows[0].text.split())
(True, 11)
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ProbeRow", "corpus_sentences", "probe_split", "word_swap_rows"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# prose: words of letters (an apostrophe or hyphen inside), with trailing punctuation
_PROSE_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[,;:.!?]?")


@dataclass(frozen=True)
class ProbeRow:
    text: str
    label: int


def corpus_sentences(documents: Sequence[str], min_words: int = 8, max_words: int = 24) -> list[str]:
    """Prose sentences of min_words..max_words plain words (no code, no markup), in order,
    each once.

    >>> corpus_sentences(["Code: x = 1. This is a sentence of plain words that reads well."], 5)
    ['This is a sentence of plain words that reads well.']
    """
    if not 2 <= min_words <= max_words:
        raise ValueError(f"need 2 <= min_words <= max_words, got {min_words} and {max_words}")
    seen, out = set(), []
    for doc in documents:
        for s in _SENTENCE_END.split(" ".join(doc.split())):
            words = s.split()
            if not min_words <= len(words) <= max_words or s in seen:
                continue
            if all(_PROSE_WORD.fullmatch(w) for w in words):
                seen.add(s)
                out.append(s)
    return out


def _swap_two(words: list[str], rng: random.Random) -> list[str] | None:
    """Two words of different spelling swapped (their punctuation stays in place)."""
    core = [w.rstrip(",;:.!?") for w in words]
    pairs = [(i, j) for i in range(len(words)) for j in range(i + 1, len(words)) if core[i].lower() != core[j].lower()]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    out = list(words)
    out[i] = core[j] + words[i][len(core[i]):]
    out[j] = core[i] + words[j][len(core[j]):]
    # a swap into the first place keeps the sentence's capitalisation pattern, which would
    # otherwise give it away: the first word is capitalised, the rest as they were
    if i == 0:
        out[0] = out[0][:1].upper() + out[0][1:]
        if core[0][1:].islower():
            out[j] = out[j][:1].lower() + out[j][1:]
    return out


def word_swap_rows(sentences: Sequence[str], seed: int = 0) -> list[ProbeRow]:
    """Each sentence once: as written (label 1) or with two words swapped (label 0), by a
    seeded coin flip; sentences with nothing to swap stay as written. Shuffled.

    >>> [r.label for r in word_swap_rows(["a a a a"], seed=1)]
    [1]
    """
    rng = random.Random(seed)
    rows = []
    for s in sentences:
        swapped = _swap_two(s.split(), rng) if rng.random() < 0.5 else None
        rows.append(ProbeRow(" ".join(swapped), 0) if swapped else ProbeRow(s, 1))
    rng.shuffle(rows)
    return rows


def probe_split(rows: Sequence[ProbeRow], n_test: int) -> tuple[list[ProbeRow], list[ProbeRow]]:
    """(train, test): the last n_test rows are the test set.

    >>> [len(p) for p in probe_split([ProbeRow("a", 1)] * 5, 2)]
    [3, 2]
    """
    if not 0 < n_test < len(rows):
        raise ValueError(f"n_test must be in 1..{len(rows) - 1} (the rows number {len(rows)}), got {n_test}")
    return list(rows[:-n_test]), list(rows[-n_test:])
