"""One decoder for the GPT-2 and Llama families (and, with causal=False, an encoder).

Read it like nanoGPT's model.py: embeddings → n_layers × (norm → attention → residual,
norm → MLP → residual) → final norm → output head. The switches live in ModelConfig.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ember.model.config import ModelConfig
from ember.model.kv_cache import KVCache
from ember.model.layers import Attention, FeedForward, make_norm, rope_cos_sin, sinusoidal_embedding


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = make_norm(cfg, cfg.d_model)
        self.attention = Attention(cfg)
        self.ffn_norm = make_norm(cfg, cfg.d_model)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, rope=None, cache=None, layer_idx=0, input_pos=None, mask=None):
        x = x + self.attention(self.attention_norm(x), rope, cache, layer_idx, input_pos, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Token ids (B, T) → logits (B, T, V).

    >>> model = Transformer(ModelConfig.tiny())
    >>> model(torch.zeros(1, 5, dtype=torch.long)).shape
    torch.Size([1, 5, 256])
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos_emb == "learned":
            self.pos_embeddings = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg, cfg.d_model)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(_init_weights)
        # GPT-2: projections into the residual stream start 1/√(2L) smaller, so the stream's
        # variance does not grow with depth.
        for block in self.layers:
            for w in (block.attention.wo.weight, block.feed_forward.w2.weight):
                nn.init.normal_(w, mean=0.0, std=0.02 / (2 * cfg.n_layers) ** 0.5)
        self.tie_weights()

    def tie_weights(self):
        """Make the output head the embedding matrix again (after `load_state_dict(assign=True)`)."""
        if self.config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
        logits_index: torch.Tensor | None = None,
        kv_len: int | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Without a cache: a plain forward at positions 0..T-1. With one: token (b, t) sits at
        position input_pos[b, t], writes its K/V there and sees cache entries ≤ that position.
        `logits_index` (B,) computes the head only at token logits_index[b] → (B, 1, V); a bool
        (B, T) mask computes it only where True → (N, V) (the head is ~20% of a small model's
        FLOPs, and SFT needs logits only at assistant tokens).
        `kv_len` (a caller that tracks positions itself, like the engine) = max(input_pos) + 1:
        it skips reading positions back from the tensor, which a compiled decode step needs.
        `segment_ids` (B, T), no cache: several sequences packed in one row. Positions restart
        at 0 where the id changes and attention never crosses segments, so each packed
        sequence gets exactly the logits it would get alone."""
        cfg = self.config
        B, T = ids.shape
        mask = None
        if cache is None:
            if input_pos is not None:
                raise ValueError("input_pos is only used with a cache; without one positions are 0..T-1")
            if T > cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {cfg.max_seq_len}")
            pos = torch.arange(T, device=ids.device).expand(B, T)  # (B, T)
            if segment_ids is not None:
                pos, mask = _segment_positions(segment_ids, self.config.causal)
        else:
            if segment_ids is not None:
                raise ValueError("segment_ids (packed sequences) are for training forwards without a cache")
            pos, mask = self._cache_positions(ids, cache, input_pos, kv_len)

        x = self.tok_embeddings(ids)  # (B, T, D)
        if cfg.pos_emb == "learned":
            x = x + self.pos_embeddings(pos)
        elif cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_embedding(pos, cfg.d_model).to(x.dtype)
        rope = rope_cos_sin(cfg, pos) if cfg.pos_emb == "rope" else None  # 2 × (B, T, Dh/2)

        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache, i, pos, mask)  # (B, T, D)

        if logits_index is not None and logits_index.dtype == torch.bool:
            x = x[logits_index]  # (N, D): only the positions a loss reads (SFT: assistant tokens)
        elif logits_index is not None:
            x = x[torch.arange(B, device=x.device), logits_index][:, None]  # (B, 1, D)
        return self.output(self.norm(x))  # (B, T or 1, V)

    def _cache_positions(self, ids, cache, input_pos, kv_len=None):
        """Check input_pos against the cache; return it and the mask (B, 1, T, S)."""
        if kv_len is not None:  # trusted caller: no validation that reads tensor values
            mask = torch.arange(kv_len, device=ids.device) <= input_pos[..., None]  # (B, T, S)
            return input_pos, mask[:, None]
        cfg = self.config
        if not cfg.causal:
            raise ValueError("a KV cache needs a causal model (config.causal is False)")
        if input_pos is None or input_pos.shape != ids.shape:
            got = None if input_pos is None else tuple(input_pos.shape)
            raise ValueError(f"with a cache, input_pos must have the shape of ids {tuple(ids.shape)}, got {got}")
        if ids.shape[0] != cache.batch_size:
            raise ValueError(f"batch of {ids.shape[0]} rows for a cache of {cache.batch_size} rows")
        lo, hi = int(input_pos.min()), int(input_pos.max())
        limit = min(cache.max_seq_len, cfg.max_seq_len)
        if lo < 0 or hi >= limit:
            raise ValueError(f"input_pos spans {lo}..{hi}, outside 0..{limit - 1} (cache and model limit)")
        # Attend only to the first S = hi + 1 cache entries: nothing past the largest position
        # has been written for this step, and S ≪ Tmax during short prompts.
        S = hi + 1
        mask = torch.arange(S, device=ids.device) <= input_pos[..., None]  # (B, T, S)
        return input_pos, mask[:, None]  # (B, 1, T, S)


def _segment_positions(seg: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids (B, T), equal within one packed sequence → positions that restart at each
    new segment (B, T) and the mask (B, 1, T, T): same segment, and causal when the model is.

    >>> _segment_positions(torch.tensor([[0, 0, 1, 1, 1]]), True)[0]
    tensor([[0, 1, 0, 1, 2]])
    """
    B, T = seg.shape
    idx = torch.arange(T, device=seg.device).expand(B, T)
    new = torch.ones_like(seg, dtype=torch.bool)
    new[:, 1:] = seg[:, 1:] != seg[:, :-1]
    start = torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=1).values  # (B, T) segment start
    mask = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    if causal:
        mask = mask & torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    return idx - start, mask[:, None]


def _init_weights(module: nn.Module):
    """GPT-2's init: N(0, 0.02) for matrices and embeddings, zero biases (norms keep ones)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
