"""An encoder-decoder Transformer (Vaswani et al. 2017 §3.1; T5 and BART are this shape).

Built from the decoder's own pieces: the encoder is `Block`s with bidirectional attention
(ModelConfig(causal=False)); each decoder block is a `Block` (causal self-attention, FFN)
with a cross-attention step between the two, and that cross-attention is the same
`Attention` module reading its keys and values from the encoder output instead of its own
input. One token embedding serves the encoder, the decoder and (tied) the LM head, as in
T5 and BART. Both stacks use n_layers blocks (T5-small: 6 + 6).

Deviations from T5, flagged: positions are the config's (RoPE by default, learned or
sinusoidal also work; a learned table is shared by both stacks), not T5's relative bias
buckets; norms are pre-norm RMSNorm/LayerNorm as the config says.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from ember.model.config import ModelConfig
from ember.model.kv_cache import KVCache
from ember.model.layers import Attention, make_norm, rope_cos_sin, sinusoidal_embedding
from ember.model.shapes import check_state_dict
from ember.model.transformer import Block, _init_weights


class CrossAttention(Attention):
    """Queries from the decoder stream x (B, T, D), keys/values from the encoder output
    memory (B, S, D): the same wq/wk/wv/wo as self-attention, no positions (the memory
    already carries them), no causality (every target position may read every source one).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(dataclasses.replace(cfg, causal=False))

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, D) → k, v (B, Hkv, S, Dh): computed once per source, reused every step."""
        B, S, _ = memory.shape
        k = self.wk(memory).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(memory).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x, kv, memory_mask=None):
        """x (B, T, D), kv from `memory_kv`, memory_mask (B, 1, 1, S) True = a real source token."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        return self.attend(q, *kv, memory_mask)


class DecoderBlock(Block):
    """x + self_attn(norm(x)), then x + cross_attn(norm(x), memory), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.cross_attention_norm = make_norm(cfg, cfg.d_model)
        self.cross_attention = CrossAttention(cfg)

    def forward(self, x, kv, memory_mask=None, rope=None, cache=None, layer_idx=0, input_pos=None, mask=None):
        x = x + self.attention(self.attention_norm(x), rope, cache, layer_idx, input_pos, mask)
        x = x + self.cross_attention(self.cross_attention_norm(x), kv, memory_mask)
        return x + self.feed_forward(self.ffn_norm(x))


class EncoderDecoder(nn.Module):
    """Source ids (B, S) and target ids (B, T) → logits (B, T, V) over the next target token.

    src_mask (B, S) and tgt_mask (B, T) are True at real tokens (None: no padding); pads
    are never attended to, so a padded row gives the logits it would give alone.

    >>> model = EncoderDecoder(ModelConfig.tiny())
    >>> model(torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)).shape
    torch.Size([2, 3, 256])
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.causal:
            raise ValueError("EncoderDecoder needs causal=True (the decoder's); the encoder is bidirectional anyway")
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos_emb == "learned":
            self.pos_embeddings = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        enc_cfg = dataclasses.replace(cfg, causal=False)
        self.encoder = nn.ModuleList(Block(enc_cfg) for _ in range(cfg.n_layers))
        self.encoder_norm = make_norm(cfg, cfg.d_model)
        self.layers = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg, cfg.d_model)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(_init_weights)
        # GPT-2's 1/√(2L) for every projection into a residual stream (3 per decoder block)
        std = 0.02 / (2 * cfg.n_layers) ** 0.5
        for block in [*self.encoder, *self.layers]:
            for w in (block.attention.wo.weight, block.feed_forward.w2.weight):
                nn.init.normal_(w, mean=0.0, std=std)
        for block in self.layers:
            nn.init.normal_(block.cross_attention.wo.weight, mean=0.0, std=std)
        self.tie_weights()

    def tie_weights(self):
        """Make the output head the embedding matrix again (after `load_state_dict(assign=True)`)."""
        if self.config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def forward(self, src, tgt, src_mask=None, tgt_mask=None) -> torch.Tensor:
        return self.decode(tgt, self.encode(src, src_mask), src_mask, tgt_mask)

    def _embed(self, ids: torch.Tensor, pos: torch.Tensor):
        """ids, pos (B, T) → embeddings (B, T, D) with additive positions, and RoPE's cos/sin or None."""
        cfg = self.config
        x = self.tok_embeddings(ids)
        if cfg.pos_emb == "learned":
            x = x + self.pos_embeddings(pos)
        elif cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_embedding(pos, cfg.d_model).to(x.dtype)
        return x, (rope_cos_sin(cfg, pos) if cfg.pos_emb == "rope" else None)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S) → memory (B, S, D): bidirectional over the real tokens of each row."""
        B, S = src.shape
        _check_length("source", S, self.config.max_seq_len)
        x, rope = self._embed(src, torch.arange(S, device=src.device).expand(B, S))
        mask = _key_mask(src_mask)  # (B, 1, 1, S) or None
        for block in self.encoder:
            x = block(x, rope, mask=mask)  # (B, S, D)
        return self.encoder_norm(x)

    def decode(self, tgt, memory, src_mask=None, tgt_mask=None, cache=None, input_pos=None, kvs=None):
        """Target ids (B, T) and memory (B, S, D) → logits (B, T, V).

        Without a cache: positions 0..T-1, causal (and key-padding when tgt_mask is given).
        With one (`generate`): the tokens sit at input_pos (B, T), all rows in step, and see
        the cache up to themselves. `kvs`: each layer's cross-attention K/V, precomputed.
        """
        B, T = tgt.shape
        if cache is None:
            _check_length("target", T, self.config.max_seq_len)
            pos = torch.arange(T, device=tgt.device).expand(B, T)
            mask = _causal_mask(tgt_mask)  # (B, 1, T, T) or None (plain causal)
        else:
            pos = input_pos
            kv_len = int(input_pos.max()) + 1
            mask = torch.arange(kv_len, device=tgt.device) <= input_pos[..., None]  # (B, T, kv_len)
            mask = mask[:, None]
        x, rope = self._embed(tgt, pos)
        kvs = kvs or [layer.cross_attention.memory_kv(memory) for layer in self.layers]
        memory_mask = _key_mask(src_mask)
        for i, (layer, kv) in enumerate(zip(self.layers, kvs)):
            x = layer(x, kv, memory_mask, rope, cache, i, pos, mask)  # (B, T, D)
        return self.output(self.norm(x))

    @torch.no_grad()
    def generate(self, src, max_new_tokens: int, start_id: int, eos_id: int | None = None,
                 src_mask=None, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding from `start_id`: (B, ≤ max_new_tokens) new ids. Rows that emit eos_id
        keep emitting it; the loop stops when every row has. use_cache: one token per step
        against a self-attention KV cache (cross-attention K/V computed once); False: the
        whole target re-run every step (same ids, the reference the cache is tested against).

        >>> model = EncoderDecoder(ModelConfig.tiny())
        >>> model.generate(torch.ones(1, 4, dtype=torch.long), 3, start_id=0).shape
        torch.Size([1, 3])
        """
        if max_new_tokens < 1 or max_new_tokens >= self.config.max_seq_len:
            raise ValueError(f"max_new_tokens must be in 1..{self.config.max_seq_len - 1}, got {max_new_tokens}")
        B = src.shape[0]
        memory = self.encode(src, src_mask)
        kvs = [layer.cross_attention.memory_kv(memory) for layer in self.layers]
        out = torch.full((B, 1), start_id, dtype=torch.long, device=src.device)
        cache = KVCache.for_model(self, B, max_new_tokens + 1) if use_cache else None
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        for t in range(max_new_tokens):
            if use_cache:
                pos = torch.full((B, 1), t, device=src.device)
                logits = self.decode(out[:, -1:], memory, src_mask, cache=cache, input_pos=pos, kvs=kvs)
            else:
                logits = self.decode(out, memory, src_mask, kvs=kvs)
            nxt = logits[:, -1].argmax(-1)  # (B,)
            if eos_id is not None:
                nxt = torch.where(done, eos_id, nxt)
                done = done | (nxt == eos_id)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_id is not None and bool(done.all()):
                break
        return out[:, 1:]


def load_encoder_decoder(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> EncoderDecoder:
    """EncoderDecoder(cfg) holding `sd`, after checking every key and shape (a ValueError
    names each missing, unexpected or mis-shaped tensor); in eval mode.

    >>> cfg = ModelConfig.tiny(n_layers=1)
    >>> load_encoder_decoder(cfg, EncoderDecoder(cfg).state_dict()).training
    False
    """
    model = EncoderDecoder(cfg)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=False)  # strict check done above (a tied head need not repeat)
    model.tie_weights()
    return model.eval()


def _check_length(what: str, n: int, max_seq_len: int) -> None:
    # from the shape, not the positions' values: no device sync per forward
    if n > max_seq_len:
        raise ValueError(f"{what} of {n} tokens is longer than max_seq_len {max_seq_len}")


def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) True = real token → (B, 1, 1, S), broadcast over heads and queries."""
    return None if mask is None else mask.bool()[:, None, None, :]


def _causal_mask(tgt_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Causal and key-padding (B, 1, T, T); each query also sees itself, so a left-padded
    row's pad queries are not empty (an all-False row makes SDPA return NaN)."""
    if tgt_mask is None:
        return None
    T = tgt_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=tgt_mask.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=tgt_mask.device)
    return ((causal & tgt_mask.bool()[:, None, :]) | eye)[:, None]
