"""Embedding geometry: cosine tables, nearest neighbours, analogies, a 2-D PCA plot — over
SmolLM2's input token embeddings and over MiniLM's sentence embeddings.

Token embeddings: a word is looked up as " word" (the space-prefixed form a word takes
inside a sentence). A word that splits into several tokens gets the mean of its pieces'
rows, and is marked (`pieces` > 1); neighbours and analogy answers are searched over the
whole vocabulary. Sentence embeddings: each word is embedded alone by the encoder, and
answers are searched over the words of `VOCAB` plus the inputs.

Analogy a : b :: c : ?  is  argmax cos(v, b − a + c) over candidates other than a, b and c
(the standard exclusion of Mikolov et al. 2013; without it the answer is usually c).

    >>> e = {"king": torch.tensor([1.0, 1, 0]), "man": torch.tensor([1.0, 0, 0]),
    ...      "woman": torch.tensor([0.0, 0, 1]), "queen": torch.tensor([0.0, 1, 1])}
    >>> analogy_rank(torch.stack(list(e.values())), list(e), "man", "king", "woman", "queen")[0]
    1
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from ember.core.io import atomic_write_bytes

VOCAB = ("king queen man woman prince princess boy girl father mother son daughter husband wife uncle aunt "
         "brother sister emperor empress lord lady actor actress cat dog kitten puppy horse cow animal pizza "
         "pasta bread apple banana car bus train plane road city country Paris France Berlin Germany Rome Italy "
         "Madrid Spain Tokyo Japan London England happy sad good bad big small hot cold run walk swim eat sleep "
         "red blue green computer code python keyboard music song river mountain sea tree").split()
ANALOGIES = (("man", "king", "woman", "queen"), ("man", "boy", "woman", "girl"),
             ("France", "Paris", "Germany", "Berlin"), ("France", "Paris", "Italy", "Rome"),
             ("man", "father", "woman", "mother"), ("cat", "kitten", "dog", "puppy"))
PAIRS = (("king", "queen"), ("king", "pizza"), ("man", "woman"), ("cat", "dog"), ("cat", "car"),
         ("Paris", "France"), ("happy", "sad"), ("apple", "banana"))


def analogy_rank(vectors: torch.Tensor, words: list[str], a: str, b: str, c: str, want: str,
                 top: int = 5) -> tuple[int | None, list[tuple[str, float]]]:
    """a : b :: c : ?  over candidate `words` with `vectors` (N, D): (1-based rank of `want`
    among the candidates other than a, b, c, or None if it is not one; the top answers)."""
    idx = {w: i for i, w in enumerate(words)}
    q = vectors[idx[b]] - vectors[idx[a]] + vectors[idx[c]]
    sims = F.cosine_similarity(vectors.float(), q.float()[None], dim=-1)  # (N,)
    for w in (a, b, c):
        sims[idx[w]] = float("-inf")
    order = sims.argsort(descending=True).tolist()
    ranked = [words[i] for i in order]
    rank = ranked.index(want) + 1 if want in idx and want not in (a, b, c) else None
    return rank, [(words[i], round(float(sims[i]), 4)) for i in order[:top]]


@dataclass
class TokenSpace:
    """SmolLM2-style token embeddings as a searchable space: every vocabulary row, with the
    looked-up words appended as extra rows (multi-token words as the mean of their pieces)."""

    vectors: torch.Tensor  # (V + n_words, D)
    words: list[str]  # decoded tokens, then the looked-up words
    pieces: dict[str, int] = field(default_factory=dict)  # word → tokens it splits into


def token_space(model, tok, words: list[str]) -> TokenSpace:
    E = model.tok_embeddings.weight.detach().float()  # (V, D)
    names = [tok.decode([i]) for i in range(E.shape[0])]
    vecs, pieces, seen = [E], {}, {}
    extra = []
    for w in dict.fromkeys(words):
        ids = tok.encode(" " + w)
        pieces[w] = len(ids)
        if len(ids) == 1:
            seen[w] = ids[0]
        else:
            extra.append(E[ids].mean(0))
    # a single-token word is its own row (renamed to the bare word); others are appended
    for w, i in seen.items():
        names[i] = w
    tail = [w for w in dict.fromkeys(words) if w not in seen]
    if extra:
        vecs.append(torch.stack(extra))
    return TokenSpace(torch.cat(vecs), names + tail, pieces)


def sentence_space(embedder, words: list[str]) -> TokenSpace:
    words = list(dict.fromkeys(words))
    return TokenSpace(embedder.embed(words).float(), words, {})


def cosine_table(space: TokenSpace, pairs=PAIRS) -> list[dict]:
    idx = {w: i for i, w in enumerate(space.words)}
    return [{"a": a, "b": b, "cos": round(float(F.cosine_similarity(space.vectors[idx[a]], space.vectors[idx[b]],
                                                                     dim=0)), 4)} for a, b in pairs]


def neighbours(space: TokenSpace, word: str, k: int = 8) -> list[tuple[str, float]]:
    idx = {w: i for i, w in enumerate(space.words)}
    sims = F.cosine_similarity(space.vectors, space.vectors[idx[word]][None], dim=-1)
    sims[idx[word]] = float("-inf")
    v, j = sims.topk(k)
    return [(space.words[i], round(float(s), 4)) for s, i in zip(v.tolist(), j.tolist())]


def pca_png(space: TokenSpace, words: list[str], title: str) -> bytes:
    """The words' vectors projected on their first two principal components, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = {w: i for i, w in enumerate(space.words)}
    X = space.vectors[[idx[w] for w in words]].float()
    X = X - X.mean(0)
    _, _, V = torch.pca_lowrank(X, q=2, center=False)
    P = (X @ V[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(P[:, 0], P[:, 1], s=10)
    for (x, y), w in zip(P, words):
        ax.annotate(w, (x, y), fontsize=8)
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def geometry_report(space: TokenSpace, top: int = 5) -> dict:
    """Cosine pairs, neighbours of a few words, and every analogy of ANALOGIES in `space`."""
    rows = []
    for a, b, c, want in ANALOGIES:
        rank, answers = analogy_rank(space.vectors, space.words, a, b, c, want, top)
        rows.append({"analogy": f"{b} - {a} + {c}", "want": want, "rank": rank, "top": answers})
    return {"cosine": cosine_table(space), "pieces": {w: n for w, n in space.pieces.items() if n > 1},
            "neighbours": {w: neighbours(space, w) for w in ("king", "cat", "Paris")}, "analogies": rows}


@dataclass
class EmbeddingsConfig:
    """Embedding geometry: cosine table, neighbours, analogies (king - man + woman), a PCA plot."""

    space: Literal["tokens", "sentences"] = "tokens"
    """tokens: a decoder's input embeddings (--model); sentences: a sentence encoder (--embedder)"""
    model: str = "smollm2"
    """decoder whose token embeddings are read (space tokens)"""
    embedder: str = "minilm"
    """sentence encoder (space sentences)"""
    top: int = 5
    """answers shown per analogy"""
    png: str | None = None
    """write the 2-D PCA plot of the word list here"""
    json: bool = False
    """print one JSON line instead of text"""


def embeddings(cfg: EmbeddingsConfig) -> dict:
    """`ember inspect embeddings`."""
    if cfg.top < 1:
        raise ValueError(f"--top must be >= 1, got {cfg.top}")
    if cfg.space == "tokens":
        import ember

        model, tok = ember.load(cfg.model)
        space, name = token_space(model, tok, list(VOCAB)), f"{cfg.model} token embeddings"
    else:
        from ember.infer.embed import load_embedder

        space, name = sentence_space(load_embedder(cfg.embedder), list(VOCAB)), f"{cfg.embedder} sentence embeddings"
    rep = {"space": name, **geometry_report(space, cfg.top)}
    if cfg.png:
        atomic_write_bytes(cfg.png, pca_png(space, list(VOCAB), f"PCA of {name}"))
    print(json.dumps(rep, ensure_ascii=False) if cfg.json else render(rep))
    return rep


def render(rep: dict) -> str:
    lines = [f"{rep['space']}", "cosine:"]
    lines += [f"  {r['a']:>8} · {r['b']:<8} {r['cos']:+.3f}" for r in rep["cosine"]]
    if rep["pieces"]:
        lines.append("multi-token words (mean of their pieces): "
                     + ", ".join(f"{w} ({n})" for w, n in rep["pieces"].items()))
    lines.append("nearest neighbours:")
    lines += [f"  {w}: " + ", ".join(f"{n!r} {s:.2f}" for n, s in nb) for w, nb in rep["neighbours"].items()]
    lines.append("analogies (inputs excluded):")
    for r in rep["analogies"]:
        got = ", ".join(f"{w!r} {s:.2f}" for w, s in r["top"])
        lines.append(f"  {r['analogy']:<24} want {r['want']!r}: rank {r['rank']}  top: {got}")
    return "\n".join(lines)
