"""Attention maps and per-head summaries, so 30 layers × 9 heads stay readable.

The maps come from `ember.infer.trace_api.walk` (softmax(q kᵀ/√Dh) recomputed from each
block's input). Per head, over all query positions t ≥ 1:

- entropy: −Σ p log p of the row, in nats (0 = one position, log(t+1) = uniform);
- distance: Σ_j p_tj (t − j), how far back the head looks on average;
- prev: p_t,t−1, the weight on the previous token;
- induction (Olsson et al. 2022): on R random tokens repeated twice, the weight a query in
  the second copy puts on the token right after its earlier occurrence (position t − R + 1).

    >>> a = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # (L=1, H=1, T=2, T=2): look at token 0
    >>> s = head_summaries(a)
    >>> float(s["prev"][0, 0]), float(s["distance"][0, 0]), float(s["entropy"][0, 0])
    (1.0, 1.0, 0.0)
"""

from __future__ import annotations

import io

import torch

from ember.infer.trace_api import walk


def head_summaries(attn: torch.Tensor) -> dict[str, torch.Tensor]:
    """attn (L, H, T, T), one sequence → {"entropy", "distance", "prev"}, each (L, H)."""
    L, H, T, _ = attn.shape
    if T < 2:
        raise ValueError(f"head summaries need at least 2 tokens, got {T}")
    rows = attn[:, :, 1:]  # (L, H, T-1, T): queries 1..T-1 (query 0 can only see itself)
    t = torch.arange(1, T, dtype=attn.dtype)[:, None]  # (T-1, 1)
    dist = (t - torch.arange(T, dtype=attn.dtype)[None]).clamp(min=0)  # (T-1, T)
    ent = -(rows * rows.clamp(min=1e-12).log()).sum(-1)  # (L, H, T-1)
    prev = rows.diagonal(dim1=-2, dim2=-1)  # (L, H, T-1): row t-1 of `rows` is query t; p[t, t-1]
    return {"entropy": ent.mean(-1), "distance": (rows * dist).sum(-1).mean(-1), "prev": prev.mean(-1)}


def induction_scores(model, repeat: int = 24, seed: int = 0, vocab_lo: int = 100) -> torch.Tensor:
    """(L, H): each head's mean attention from the second copy of `repeat` random tokens to
    the token after the same token's first occurrence. Tokens are drawn (seeded) from ids
    ≥ vocab_lo, past most special and byte tokens."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    if not 2 <= repeat <= model.config.max_seq_len // 2:
        raise ValueError(f"repeat must be in 2..{model.config.max_seq_len // 2}, got {repeat}")
    half = torch.randint(min(vocab_lo, V - 1), V, (repeat,), generator=g)
    ids = torch.cat([half, half])[None]  # (1, 2R)
    attn = torch.stack([a[0] for a in walk(model, ids).attn])  # (L, H, 2R, 2R)
    q = torch.arange(repeat, 2 * repeat - 1)  # queries in the second copy (the last has no next)
    return attn[:, :, q, q - repeat + 1].mean(-1)


def mosaic(attn: torch.Tensor) -> torch.Tensor:
    """(L, H, T, T) → one (L·(T+1), H·(T+1)) image, NaN gutters between the maps."""
    L, H, T, _ = attn.shape
    img = torch.full((L * (T + 1), H * (T + 1)), float("nan"))
    for i in range(L):
        for h in range(H):
            img[i * (T + 1): i * (T + 1) + T, h * (T + 1): h * (T + 1) + T] = attn[i, h]
    return img


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def mosaic_png(attn: torch.Tensor) -> bytes:
    """Every layer (rows) × head (columns) attention map in one PNG (query down, key across)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, H, T, _ = attn.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.9 * H, 14), min(1 + 0.9 * L, 40)))
    ax.imshow(mosaic(attn).numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([h * (T + 1) + T / 2 for h in range(H)], [f"h{h}" for h in range(H)])
    ax.set_yticks([i * (T + 1) + T / 2 for i in range(L)], [f"L{i}" for i in range(L)])
    ax.set_title("attention per layer and head (query ↓, key →)")
    return _png(fig)


def layer_png(attn: torch.Tensor, layer: int, labels: list[str]) -> bytes:
    """One layer's heads (H, T, T) side by side, axes labelled with the tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, T, _ = attn.shape
    fig, axes = plt.subplots(1, H, figsize=(2.2 * H + 1, 2.6), squeeze=False)
    for h, ax in enumerate(axes[0]):
        ax.imshow(attn[h].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"L{layer} h{h}", fontsize=8)
        ticks = range(T) if T <= 24 else []
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=6)
        ax.set_yticks(ticks, [labels[t] for t in ticks] if h == 0 else [], fontsize=6)
    return _png(fig)


def summaries_png(summ: dict[str, torch.Tensor]) -> bytes:
    """One (L, H) heatmap per summary, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summ), figsize=(3.2 * len(summ), 5), squeeze=False)
    for ax, (name, v) in zip(axes[0], summ.items()):
        im = ax.imshow(v.numpy(), cmap="magma", aspect="auto", interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)
