"""The pieces of a Transformer block: norms, positions (RoPE, sinusoidal), attention, MLPs.

Shapes: B batch, T time (new tokens), kv_len keys attended, D d_model, H heads, Hkv KV heads,
Dh head dim. Numerics follow Hugging Face where a choice exists (RMSNorm in fp32, RoPE
angles in fp32), so converted checkpoints match `transformers` to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ember.model.config import ModelConfig
from ember.model.positions import rope_frequencies, rope_inv_freq

__all__ = ["Attention", "FeedForward", "RMSNorm", "apply_rope", "attention", "make_norm", "rope_cos_sin",
           "rope_inv_freq", "sinusoidal_embedding"]

# ---- norms --------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019), computed in fp32 as HF Llama does."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


# ---- positions ----------------------------------------------------------------------------


def rope_cos_sin(cfg: ModelConfig, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position × frequency for positions `pos` (B, T): each (B, T, Dh/2), fp32.

    Computed per forward from the positions themselves (no table buffer): it costs
    B·T·Dh/2 products, nothing beside the matmuls, and leaves nothing on the meta device.
    The frequencies and YaRN's factor on cos/sin come from ember.model.positions; "dynamic"
    scaling reads the largest position (a host sync), as transformers does.
    """
    rs = cfg.rope_scaling
    dynamic = rs is not None and rs.get("type", rs.get("rope_type")) == "dynamic"
    inv_freq, factor = rope_frequencies(cfg, int(pos.max()) + 1 if dynamic and pos.numel() else None)
    angles = pos.float()[..., None] * inv_freq.to(pos.device)  # (B, T, Dh/2)
    if factor == 1.0:
        return angles.cos(), angles.sin()
    return angles.cos() * factor, angles.sin() * factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate each pair of x (B, H, T, Dh) by the angle for its position (Su et al. 2021).

    interleaved=False pairs (x[i], x[i + Dh/2]) ("rotate-half", HF); True pairs
    (x[2i], x[2i+1]) (the original paper, and GGUF's permuted Q/K rows).
    """
    if interleaved and not torch.compiler.is_compiling():
        # Pairs as complex numbers: one complex product rotates them all (cos + i·sin); fewer
        # eager ops. Inductor lowers complex math poorly, so compiled graphs take the real form.
        rot = torch.complex(cos, sin)[:, None]  # (B, 1, T, Dh/2)
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, T, Dh/2)
        return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, Dh/2)
    if interleaved:
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # each (B, H, T, Dh/2)
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def sinusoidal_embedding(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed positions of Vaswani et al. (2017) §3.5 for `pos` (B, T): (B, T, dim), fp32.

    PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim)).
    """
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=pos.device).float() / dim))
    angles = pos.float()[..., None] * inv_freq  # (B, T, dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


# ---- attention ----------------------------------------------------------------------------


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    gqa: bool | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ / √Dh + mask) v through F.scaled_dot_product_attention.

    q (B, H, T, Dh); k, v (B, Hkv, kv_len, Dh) with H a multiple of Hkv (GQA/MQA: each group of
    H/Hkv query heads shares one KV head); mask bool (B, 1, T, kv_len), True = may attend.

    >>> q = k = v = torch.eye(2)[None, None]  # (1, 1, 2, 2)
    >>> attention(q, k, v).squeeze().round(decimals=2)
    tensor([[0.6700, 0.3300],
            [0.3300, 0.6700]])
    """
    if gqa is None:  # callers that know it pass a plain bool (shapes are symbolic when compiled)
        gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)


class Attention(nn.Module):
    """Multi-head self-attention with H query heads and Hkv key/value heads.

    forward = attend(*project(...)): `project` gives the queries and the keys/values to
    attend (rotated, through the cache), `attend` mixes them and projects out. Transforms
    build on these steps from outside: ember.quant.fuse replaces the module by one whose
    `qkv` is a single matmul; ember.peft.prompt wraps it to put trained keys before the
    sequence's.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.causal = cfg.causal
        self.gqa = cfg.n_kv_heads != cfg.n_heads
        self.rope_interleaved = cfg.rope_interleaved
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.wk = nn.Linear(cfg.d_model, kv_dim, bias=cfg.bias)
        self.wv = nn.Linear(cfg.d_model, kv_dim, bias=cfg.bias)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) → q (B, T, H·Dh), k and v (B, T, Hkv·Dh): the three input projections."""
        return self.wq(x), self.wk(x), self.wv(x)

    def project(self, x, rope=None, cache=None, layer_idx=0, input_pos=None, kv_len=None):
        """x (B, T, D) → q (B, H, T, Dh) and the keys/values to attend, k, v (B, Hkv, kv_len, Dh).

        With a cache, this step's K/V go in at `input_pos` and the first kv_len entries come
        back (kv_len: the key length of the caller's mask); without one, kv_len = T."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        if rope is not None:
            q = apply_rope(q, *rope, self.rope_interleaved)
            k = apply_rope(k, *rope, self.rope_interleaved)
        if cache is not None:
            k, v = cache.update(layer_idx, input_pos, k, v)  # (B, Hkv, Tmax, Dh)
            # .to: a no-op unless the cache dtype differs
            k, v = k[:, :, :kv_len].to(q.dtype), v[:, :, :kv_len].to(q.dtype)
        return q, k, v

    def attend(self, q, k, v, mask=None) -> torch.Tensor:
        """q (B, H, T, Dh), k, v (B, Hkv, kv_len, Dh) → (B, T, D). mask (B, 1, T, kv_len), True =
        may attend; None = causal (or full, in an encoder)."""
        B, _, T, _ = q.shape
        if mask is None:
            y = attention(q, k, v, is_causal=self.causal, gqa=self.gqa)  # (B, H, T, Dh)
        else:  # a cache's mask, or packed sequences' block-diagonal one (B, 1, T, T)
            y = attention(q, k, v, mask=mask, gqa=self.gqa)  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, -1)  # heads side by side again
        return self.wo(y)

    def forward(self, x, rope=None, cache=None, layer_idx=0, input_pos=None, mask=None):
        """x (B, T, D) → (B, T, D). With a cache, K/V go in at `input_pos` and `mask`
        (B, 1, T, kv_len) says which of the first kv_len cache entries each query sees."""
        kv_len = None if mask is None else mask.shape[-1]
        return self.attend(*self.project(x, rope, cache, layer_idx, input_pos, kv_len), mask)


# ---- MLP ----------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """Position-wise MLP. swiglu: w2(silu(w1 x) * w3 x) (Shazeer 2020); gelu: w2(gelu(w1 x)).

    mlp="gelu" uses the tanh approximation, as GPT-2 ("gelu_new") does; "gelu_erf" the exact
    x·Φ(x), as BERT does (the two differ by up to ~1e-3, enough to break parity). ember.quant.fuse
    replaces a swiglu module by one whose `gate_up` is a single matmul.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.gelu_approximate = "none" if cfg.mlp == "gelu_erf" else "tanh"
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)  # gate (swiglu) / up (gelu)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)  # down
        if self.swiglu:
            self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)  # up

    def gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """swiglu's two input projections: x (B, T, D) → gate, up (B, T, d_ff)."""
        return self.w1(x), self.w3(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            gate, up = self.gate_up(x)
            return self.w2(F.silu(gate) * up)
        return self.w2(F.gelu(self.w1(x), approximate=self.gelu_approximate))
