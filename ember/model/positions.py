"""Positions beyond the plain tables: RoPE frequencies with context-extension scaling, and
the sliding-window (with attention sinks) mask.

RoPE scaling stretches a model trained at context L to factor·L by changing the rotation
frequencies theta^(-2i/Dh), i < Dh/2 (cfg.rope_scaling["type"]):

- linear: every frequency / factor (position interpolation, Chen et al. 2023);
- ntk: a larger base, theta·factor^(Dh/(Dh-2)) ("NTK-aware", bloc97 2023): the highest
  frequency is kept, the lowest is divided by exactly `factor`;
- dynamic: ntk with the factor grown from the current length s > L,
  theta·(factor·s/L - factor + 1)^(Dh/(Dh-2)), unchanged up to L (emozilla 2023);
- yarn: high frequencies kept, low ones / factor, a linear ramp between, and cos/sin (so
  the attention logits) scaled by 0.1·ln(factor) + 1 (Peng et al. 2023, eq. 21);
- llama3: Meta's Llama 3.1 band-wise blend (low frequencies / factor, smooth in between).

Each matches `transformers.modeling_rope_utils` (tests/model/test_positions.py).
"""

from __future__ import annotations

import math

import torch

from ember.model.config import ModelConfig


def rope_frequencies(cfg: ModelConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (Dh/2,) fp32, attention factor) for `cfg`'s RoPE and scaling.

    seq_len: the length of the current forward (max position + 1); only "dynamic" reads it.
    The attention factor multiplies cos and sin (YaRN's mscale; 1.0 for every other type).

    >>> inv, af = rope_frequencies(ModelConfig.tiny(rope_scaling={"type": "linear", "factor": 2.0}))
    >>> inv[:2], af
    (tensor([0.5000, 0.1581]), 1.0)
    """
    dh = cfg.head_dim
    exponents = torch.arange(0, dh, 2, dtype=torch.int64).float() / dh
    inv_freq = 1.0 / (cfg.rope_theta ** exponents)
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq, 1.0
    kind = rs.get("type", rs.get("rope_type"))
    factor = float(rs["factor"])
    old_len = float(rs.get("original_max_position_embeddings", cfg.max_seq_len))
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "ntk":
        return 1.0 / ((cfg.rope_theta * factor ** (dh / (dh - 2))) ** exponents), 1.0
    if kind == "dynamic":
        s = max(float(seq_len or 0), old_len)
        base = cfg.rope_theta * (factor * s / old_len - (factor - 1)) ** (dh / (dh - 2))
        return 1.0 / (base ** exponents), 1.0
    if kind == "yarn":
        return _yarn(cfg, rs, factor, old_len)
    return _llama3(inv_freq, rs, factor), 1.0


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/Dh), i < Dh/2, with the static scaling; fp32, (Dh/2,).

    >>> rope_inv_freq(ModelConfig.tiny())[:2]
    tensor([1.0000, 0.3162])
    """
    return rope_frequencies(cfg)[0]


def _yarn(cfg: ModelConfig, rs: dict, factor: float, old_len: float) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): per dimension, interpolate (/ factor) where a wavelength is
    longer than the trained context, keep (extrapolate) where it turns more than beta_fast
    times within it, and ramp linearly between; cos/sin scaled by the mscale of eq. 21."""
    dh, base = cfg.head_dim, cfg.rope_theta
    af = rs.get("attention_factor")
    if af is None:
        mscale, mscale_all = rs.get("mscale"), rs.get("mscale_all_dim")
        af = _mscale(factor, mscale) / _mscale(factor, mscale_all) if mscale and mscale_all else _mscale(factor)
    beta_fast, beta_slow = float(rs.get("beta_fast", 32)), float(rs.get("beta_slow", 1))

    def dim_of(rotations: float) -> float:  # the dimension whose wavelength fits `rotations` times in old_len
        return dh * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dh - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    ramp = ((torch.arange(dh // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dh, 2).float() / dh)
    keep = 1 - ramp  # 1: extrapolate (the frequency as trained), 0: interpolate (/ factor)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    return inv_freq, float(af)


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _llama3(inv_freq: torch.Tensor, rs: dict, factor: float) -> torch.Tensor:
    """Llama 3.1: wavelengths beyond old_len/low_freq_factor are divided by factor, those
    below old_len/high_freq_factor kept, and the band between blended smoothly."""
    low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old_len = float(rs["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, blended, scaled)


def window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, n_sinks: int = 0) -> torch.Tensor:
    """Which keys each query may see under a sliding window: q_pos (B, T) and k_pos (B, S)
    (or (S,)) positions → bool (B, 1, T, S), True where 0 <= q - k < window, or where the key
    is one of the first n_sinks positions (attention sinks) and k <= q.

    >>> window_mask(torch.arange(4)[None], torch.arange(4), window=2, n_sinks=1)[0, 0].int()
    tensor([[1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 0, 1, 1]], dtype=torch.int32)
    """
    if k_pos.dim() == 1:
        k_pos = k_pos.expand(q_pos.shape[0], -1)
    dist = q_pos[:, :, None] - k_pos[:, None, :]  # (B, T, S)
    seen = (dist >= 0) & ((dist < window) | (k_pos[:, None, :] < n_sinks))
    return seen[:, None]
