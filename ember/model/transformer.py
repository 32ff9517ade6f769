"""One decoder for the GPT-2 and Llama families (and, with causal=False, the BERT encoder).

Read it like nanoGPT's model.py: embeddings → n_layers × (norm → attention → residual,
norm → MLP → residual) → final norm (the body, `hidden`) → output head (`lm_head`). The
switches live in ModelConfig; BERT's are bidirectional attention with a padding mask,
token-type embeddings, a norm on the embeddings and post-norm blocks (no final norm).
The model is plain: quantization, fusion and adapters replace or wrap its modules from outside.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ember.model.config import ModelConfig
from ember.model.kv_cache import KVCache
from ember.model.layers import Attention, FeedForward, make_norm, rope_cos_sin, sinusoidal_embedding
from ember.model.moe import MoEFeedForward
from ember.model.positions import window_mask


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); or, with
    norm_position="post" (Vaswani et al. 2017, BERT), norm(x + attn(x)), then norm(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.post_norm = cfg.norm_position == "post"
        self.attention_norm = make_norm(cfg, cfg.d_model)
        self.attention = Attention(cfg)
        self.ffn_norm = make_norm(cfg, cfg.d_model)
        self.feed_forward = MoEFeedForward(cfg) if cfg.moe is not None else FeedForward(cfg)

    def forward(self, x, rope=None, cache=None, layer_idx=0, input_pos=None, mask=None):
        if self.post_norm:
            x = self.attention_norm(x + self.attention(x, rope, cache, layer_idx, input_pos, mask))
            return self.ffn_norm(x + self.feed_forward(x))
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
        if cfg.n_token_types:
            self.type_embeddings = nn.Embedding(cfg.n_token_types, cfg.d_model)
        if cfg.embed_norm:
            self.embed_norm = make_norm(cfg, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # post-norm blocks end normed already: no final norm (BERT has none)
        self.norm = make_norm(cfg, cfg.d_model) if cfg.norm_position == "pre" else nn.Identity()
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(_init_weights)
        # GPT-2: projections into the residual stream start 1/√(2L) smaller, so the stream's
        # variance does not grow with depth.
        for block in self.layers:
            ffs = block.feed_forward.experts if cfg.moe is not None else [block.feed_forward]
            for w in (block.attention.wo.weight, *(ff.w2.weight for ff in ffs)):
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
        logits_mask: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids (B, T) → logits (B, T, V): `hidden`, then the LM head (see `lm_head` for
        logits_index and logits_mask, which compute the head at some positions only)."""
        h = self.hidden(
            ids, cache, input_pos, kv_len, segment_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return self.lm_head(h, logits_index, logits_mask)

    def hidden(
        self,
        ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        input_pos: torch.Tensor | None = None,
        kv_len: int | None = None,
        segment_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The body: token ids (B, T), or input embeddings (B, T, D), → final-normed hidden
        states (B, T, D), what every head (LM, reward, value) reads.

        Without a cache: a plain forward at positions 0..T-1. With one: token (b, t) sits at
        position input_pos[b, t], writes its K/V there and sees cache entries ≤ that position.
        `kv_len` (a caller that tracks positions itself, like the engine) = max(input_pos) + 1:
        it skips reading positions back from the tensor, which a compiled decode step needs.
        `segment_ids` (B, T), no cache: several sequences packed in one row. Positions restart
        at 0 where the id changes and attention never crosses segments, so each packed
        sequence gets exactly the logits it would get alone.
        `positions` (B, T) and `mask` (B, 1, T, T) (True = may attend), no cache: a layout the
        caller builds itself (prompt tuning's virtual tokens).
        `attention_mask` (B, T), no cache: 1/True = real token, 0 = padding; no query attends to
        a padding key (an encoder's padded batch). `token_type_ids` (B, T): BERT's segment A/B
        ids (zeros when not given and the model has n_token_types).

        >>> Transformer(ModelConfig.tiny()).hidden(torch.zeros(1, 5, dtype=torch.long)).shape
        torch.Size([1, 5, 64])
        """
        if (ids is None) == (inputs_embeds is None):
            raise ValueError("give ids or inputs_embeds, not both or neither")
        src = ids if inputs_embeds is None else inputs_embeds
        B, T = src.shape[:2]
        if attention_mask is not None:
            mask = self._key_mask(attention_mask, (B, T), mask)
        pos, mask = self._layout(B, T, src.device, cache, input_pos, kv_len, segment_ids, positions, mask)
        if self.config.sliding_window is not None:
            mask = self._windowed(mask, pos, cache is not None)
        x = self.tok_embeddings(ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        x = self._add_embeddings(x, pos, token_type_ids)  # (B, T, D)
        cfg = self.config
        rope = rope_cos_sin(cfg, pos) if cfg.pos_emb == "rope" else None  # 2 × (B, T, Dh/2)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache, i, pos, mask)  # (B, T, D)
        return self.norm(x)

    def _add_embeddings(self, x: torch.Tensor, pos: torch.Tensor, token_type_ids: torch.Tensor | None):
        """Token embeddings x (B, T, D) + positions (+ token types), then the embedding norm."""
        cfg = self.config
        if cfg.pos_emb == "learned":
            x = x + self.pos_embeddings(pos)
        elif cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_embedding(pos, cfg.d_model).to(x.dtype)
        if cfg.n_token_types:
            if token_type_ids is None:
                x = x + self.type_embeddings.weight[0]  # every token in segment A
            else:
                if token_type_ids.shape != x.shape[:2]:
                    got, want = tuple(token_type_ids.shape), tuple(x.shape[:2])
                    raise ValueError(f"token_type_ids {got} does not match ids {want}")
                x = x + self.type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but the model has no token-type embeddings (n_token_types 0)")
        return self.embed_norm(x) if cfg.embed_norm else x

    def _windowed(self, mask: torch.Tensor | None, pos: torch.Tensor, cached: bool) -> torch.Tensor:
        """The mask (B, 1, T, kv_len) narrowed to the sliding window and its sinks. Keys sit at
        positions pos (no cache) or at their cache index (with one); mask None is causal."""
        cfg = self.config
        kv_len = pos.shape[1] if mask is None else mask.shape[-1]
        k_pos = torch.arange(kv_len, device=pos.device) if cached else pos  # (kv_len,) or (B, T)
        seen = window_mask(pos, k_pos, cfg.sliding_window, cfg.n_sink_tokens)  # (B, 1, T, kv_len)
        return seen if mask is None else mask & seen

    def _key_mask(self, attention_mask: torch.Tensor, shape: tuple[int, int], mask) -> torch.Tensor:
        """attention_mask (B, T), 1 = real token → bool mask: padding keys are hidden.

        Bidirectional: (B, 1, 1, T), broadcast over queries (as HF BERT: padding queries still
        see the real keys; every row needs one real token). Causal: (B, 1, T, T), and each query
        also sees itself, so a left-padding query attends somewhere (an all-masked query row
        gives NaN, which would then leak through the values)."""
        if mask is not None:
            raise ValueError("give attention_mask or mask, not both")
        if tuple(attention_mask.shape) != shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match ids {shape}")
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        if not self.config.causal:
            return keys
        eye = torch.eye(shape[1], dtype=torch.bool, device=keys.device)
        return (keys & torch.ones_like(eye).tril()) | eye  # (B, 1, T, T)

    def lm_head(
        self, h: torch.Tensor, logits_index: torch.Tensor | None = None, logits_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states h (B, T, D) → logits. One rule per argument:

        - neither: every position, (B, T, V);
        - `logits_index` (B,) ints: position logits_index[b] of each row, (B, 1, V), the
          T dim kept (the engine's prefill reads only the last token);
        - `logits_mask` (B, T) bool: the positions where True, flattened, (N, V) (SFT needs
          logits only at assistant tokens; the head is ~20% of a small model's FLOPs).

        A bool `logits_index` is read as `logits_mask`, for older callers.
        """
        if logits_index is not None and logits_index.dtype == torch.bool:
            if logits_mask is not None:
                raise ValueError("give logits_index or logits_mask, not both")
            logits_index, logits_mask = None, logits_index
        if logits_index is not None and logits_mask is not None:
            raise ValueError("give logits_index or logits_mask, not both")
        if logits_mask is not None:
            h = h[logits_mask]  # (N, D): only the positions a loss reads (SFT: assistant tokens)
        elif logits_index is not None:
            h = h[torch.arange(h.shape[0], device=h.device), logits_index][:, None]  # (B, 1, D)
        return self.output(h)  # (B, T or 1, V) or (N, V)

    def _layout(self, B, T, device, cache, input_pos, kv_len, segment_ids, positions, mask):
        """Positions (B, T) and attention mask (B, 1, T, kv_len) or None for one forward."""
        if cache is not None:
            if segment_ids is not None:
                raise ValueError("segment_ids (packed sequences) are for training forwards without a cache")
            if positions is not None or mask is not None:
                raise ValueError("positions and mask are for forwards without a cache; a cache takes input_pos")
            return self._cache_positions(B, T, device, cache, input_pos, kv_len)
        if input_pos is not None:
            raise ValueError("input_pos is only used with a cache; without one positions are 0..T-1")
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_seq_len {self.config.max_seq_len}")
        if segment_ids is not None:
            if positions is not None or mask is not None:
                raise ValueError("give segment_ids or positions/mask, not both")
            return segment_positions(segment_ids, self.config.causal)
        if positions is None:
            positions = torch.arange(T, device=device).expand(B, T)  # (B, T)
        return positions, mask

    def _cache_positions(self, B, T, device, cache, input_pos, kv_len=None):
        """Check input_pos against the cache; return it and the mask (B, 1, T, kv_len)."""
        if kv_len is not None:  # trusted caller: no validation that reads tensor values
            mask = torch.arange(kv_len, device=device) <= input_pos[..., None]  # (B, T, kv_len)
            return input_pos, mask[:, None]
        cfg = self.config
        if not cfg.causal:
            raise ValueError("a KV cache needs a causal model (config.causal is False)")
        if input_pos is None or input_pos.shape != (B, T):
            got = None if input_pos is None else tuple(input_pos.shape)
            raise ValueError(f"with a cache, input_pos must have the shape of ids {(B, T)}, got {got}")
        if B != cache.batch_size:
            raise ValueError(f"batch of {B} rows for a cache of {cache.batch_size} rows")
        lo, hi = int(input_pos.min()), int(input_pos.max())
        limit = min(cache.max_seq_len, cfg.max_seq_len)
        if lo < 0 or hi >= limit:
            raise ValueError(f"input_pos spans {lo}..{hi}, outside 0..{limit - 1} (cache and model limit)")
        # Attend only to the first kv_len = hi + 1 cache entries: nothing past the largest
        # position has been written for this step, and kv_len ≪ Tmax during short prompts.
        kv_len = hi + 1
        mask = torch.arange(kv_len, device=device) <= input_pos[..., None]  # (B, T, kv_len)
        return input_pos, mask[:, None]  # (B, 1, T, kv_len)


def segment_positions(seg: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids (B, T), equal within one packed sequence → positions that restart at each
    new segment (B, T) and the mask (B, 1, T, T): same segment, and causal when the model is.

    >>> segment_positions(torch.tensor([[0, 0, 1, 1, 1]]), True)[0]
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
