"""Linears on GGUF's own blocks for the native kernels: Q4Linear (Q4_1/Q4_0 codes kept
exactly) and Q8Linear/Q8Embedding (Q8_0), with plain-PyTorch references of the same math.

Storage per weight (N, K): Q4 — `qs` uint8 (N, K/2), block b's 16 bytes as in the file (low
nibbles inputs 0..15, high 16..31), `d`, `m` fp16 (N, K/32), value q·d + m. Q8 — `qs` int8
(N, K) in pair-permuted order (see q4.cpp: blocks 2p, 2p+1 stored lo_2p, lo_2p+1, hi_2p,
hi_2p+1, 16 values each) and `d` fp16 (N, K/32), value q·d. Activations are quantized
to int8 per block of 32 (d = max|x|/127) inside the kernel, for any number of rows: a few
(decode) on per-row dot products, `ember_gemm_rows()` or more (prefill) on a tiled int8
GEMM that repacks 16 weight rows at a time. The GEMM replaced a bf16 matmul over the weight
dequantized for each call: it is faster at every SmolLM2 shape and row count measured
(bench/quant_matmul.py --gemm) and needs no N×K bf16 copy.

>>> lin = Q4Linear.from_float(torch.randn(64, 128))
>>> lin(torch.randn(3, 128)).shape
torch.Size([3, 64])
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ember.kernels.build import load_kernels
from ember.kernels.layout import pair_permute as _pair_permute_np
from ember.kernels.layout import q4_arrays, q8_arrays, quantize_q4_1, quantize_q8_0

QK = 32


def unsupported_shape(out_features: int, in_features: int) -> str | None:
    """Why the kernels cannot take an (N, K) weight, or None.

    >>> unsupported_shape(576, 576), unsupported_shape(576, 96)
    (None, 'in_features 96 is not a multiple of 64')
    """
    if in_features % 64:
        return f"in_features {in_features} is not a multiple of 64"
    if out_features < 1:
        return f"out_features {out_features} must be positive"
    return None


def pair_permute(q: torch.Tensor) -> torch.Tensor:
    """(N, K) in natural order → pair-permuted order (K % 64 == 0), the kernels' int8 layout.

    >>> pair_permute(torch.arange(64)[None])[0, 16:20].tolist()
    [32, 33, 34, 35]
    """
    return torch.from_numpy(_pair_permute_np(q.detach().cpu().numpy()))


def pair_unpermute(q: torch.Tensor) -> torch.Tensor:
    """Inverse of pair_permute, along the last dim (any leading dims)."""
    K = q.shape[-1]
    return q.reshape(*q.shape[:-1], K // 64, 2, 2, 16).transpose(-3, -2).reshape(q.shape)


# ---- references (plain PyTorch, the same math as the kernels) -----------------------------


def quantize_q8_reference(x: torch.Tensor):
    """Rows x (M, K) → int8 codes (M, K) natural order, d (M, K/32), s = d·Σq (M, K/32).

    >>> q, d, s = quantize_q8_reference(torch.linspace(-1, 1, 64)[None])
    >>> q[0, :2].tolist(), q.abs().max().item()
    ([-127, -123], 127)
    """
    M, K = x.shape
    xb = x.float().reshape(M, K // QK, QK)
    amax = xb.abs().amax(-1)  # (M, K/32)
    d = amax / 127
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    q = (xb * inv[..., None]).round().clamp_(-127, 127)
    s = d * q.sum(-1)
    return q.to(torch.int8).reshape(M, K), d, s


def q4_codes(qs: torch.Tensor) -> torch.Tensor:
    """Stored nibbles (N, K/2) → codes int32 (N, K) in 0..15, natural input order."""
    N = qs.shape[0]
    b = qs.reshape(N, -1, 16).to(torch.int32)
    return torch.cat([b & 0xF, b >> 4], dim=-1).reshape(N, -1)


def q4_matmul_reference(x, qs, d, m) -> torch.Tensor:
    """x (M, K) @ Wᵀ with int8 block activations, as the kernel computes it (in fp64)."""
    q, dx, sx = quantize_q8_reference(x)
    M, K = q.shape
    qw = q4_codes(qs).double().reshape(-1, K // QK, QK)  # (N, K/32, 32)
    dot = torch.einsum("mbi,nbi->mnb", q.double().reshape(M, K // QK, QK), qw)  # (M, N, K/32)
    y = (dot * (d.double()[None] * dx.double()[:, None])).sum(-1) + sx.double() @ m.double().t()
    return y.float()


def q8_matmul_reference(x, qs_permuted, d) -> torch.Tensor:
    """x (M, K) @ Wᵀ for a Q8 weight with int8 block activations (in fp64)."""
    q, dx, _ = quantize_q8_reference(x)
    M, K = q.shape
    qw = pair_unpermute(qs_permuted).double().reshape(-1, K // QK, QK)
    dot = torch.einsum("mbi,nbi->mnb", q.double().reshape(M, K // QK, QK), qw)
    return (dot * (d.double()[None] * dx.double()[:, None])).sum(-1).float()


# ---- GGUF blocks → tensors ------------------------------------------------------------------


def q4_parts(raw, shape, kind: str = "Q4_1") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GGUF Q4_1 (fp16 d, fp16 m, 16 bytes) or Q4_0 (fp16 d, 16 bytes; m = -8d, exact in
    fp16) blocks of a weight (N, K) → qs (N, K/2), d, m (N, K/32) (layout.q4_arrays as tensors)."""
    return tuple(torch.from_numpy(a) for a in q4_arrays(raw, shape, kind))


class Q4Linear(nn.Module):
    """y = x Wᵀ with W in Q4 blocks (GGUF Q4_1/Q4_0 codes kept exactly); no bias; rows of
    any count run on the kernel."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        why = unsupported_shape(out_features, in_features)
        if why:
            raise ValueError(f"Q4Linear({in_features}, {out_features}): {why}")
        self.in_features, self.out_features = in_features, out_features
        self.bias = None  # Llama-family projections have none
        N, K = out_features, in_features
        self.register_buffer("qs", torch.zeros(N, K // 2, dtype=torch.uint8))
        self.register_buffer("d", torch.zeros(N, K // QK, dtype=torch.float16))
        self.register_buffer("m", torch.zeros(N, K // QK, dtype=torch.float16))

    @classmethod
    def from_parts(cls, qs, d, m) -> Q4Linear:
        mod = cls(qs.shape[1] * 2, qs.shape[0])
        mod.qs, mod.d, mod.m = qs.contiguous(), d.to(torch.float16).contiguous(), m.to(torch.float16).contiguous()
        return mod

    @classmethod
    def from_q4_1(cls, raw, shape) -> Q4Linear:
        """From GGUF Q4_1 blocks of a weight (N, K), codes kept exactly."""
        return cls.from_parts(*q4_parts(raw, shape, "Q4_1"))

    @classmethod
    def from_q4_0(cls, raw, shape) -> Q4Linear:
        """From GGUF Q4_0 blocks (value (q - 8)·d), exactly."""
        return cls.from_parts(*q4_parts(raw, shape, "Q4_0"))

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Q4Linear:
        """Round-to-nearest Q4_1 (ggml's reference: d = (max - min)/15, m = min)."""
        return cls.from_parts(*(torch.from_numpy(a) for a in quantize_q4_1(weight.detach().float().numpy())))

    @classmethod
    def cat(cls, mods) -> Q4Linear:
        """Modules sharing an input → one whose outputs are theirs side by side (fusion)."""
        return cls.from_parts(*(torch.cat([getattr(x, k) for x in mods]) for k in ("qs", "d", "m")))

    def dequantize(self) -> torch.Tensor:
        """The weight (N, K) in fp32."""
        N, K = self.out_features, self.in_features
        q = q4_codes(self.qs).float().reshape(N, K // QK, QK)
        return (q * self.d.float()[..., None] + self.m.float()[..., None]).reshape(N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, K = self.out_features, self.in_features
        x2 = x.reshape(-1, K).float().contiguous()  # (M, K)
        M, lib = x2.shape[0], load_kernels()
        if lib is None:
            y = q4_matmul_reference(x2, self.qs, self.d, self.m)
        else:
            y = torch.empty(M, N)
            lib.ember_matmul(0, self.qs.data_ptr(), self.d.data_ptr(), self.m.data_ptr(), N, K,
                             x2.data_ptr(), M, y.data_ptr(), torch.get_num_threads())
        return y.to(x.dtype).reshape(*x.shape[:-1], N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Q8Linear(nn.Module):
    """y = x Wᵀ with W in Q8_0 blocks (the LM head); rows of any count run on the kernel."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        why = unsupported_shape(out_features, in_features)
        if why:
            raise ValueError(f"Q8Linear({in_features}, {out_features}): {why}")
        self.in_features, self.out_features = in_features, out_features
        self.bias = None
        self.register_buffer("qs", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("d", torch.zeros(out_features, in_features // QK, dtype=torch.float16))

    @classmethod
    def from_parts(cls, q_natural: torch.Tensor, d: torch.Tensor) -> Q8Linear:
        mod = cls(q_natural.shape[1], q_natural.shape[0])
        mod.qs = pair_permute(q_natural.to(torch.int8)).contiguous()
        mod.d = d.to(torch.float16).contiguous()
        return mod

    @classmethod
    def from_q8_0(cls, raw, shape) -> Q8Linear:
        """From GGUF Q8_0 blocks (fp16 d, 32 int8), codes kept exactly, in the pair-permuted layout."""
        qs, d = q8_arrays(raw, shape)
        mod = cls(shape[1], shape[0])
        mod.qs, mod.d = torch.from_numpy(qs), torch.from_numpy(d)
        return mod

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> Q8Linear:
        """Round-to-nearest Q8_0 (d = max|w|/127 per block of 32)."""
        return cls.from_parts(*(torch.from_numpy(a) for a in quantize_q8_0(weight.detach().float().numpy())))

    def dequantize(self) -> torch.Tensor:
        N, K = self.out_features, self.in_features
        q = pair_unpermute(self.qs).float().reshape(N, K // QK, QK)
        return (q * self.d.float()[..., None]).reshape(N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, K = self.out_features, self.in_features
        x2 = x.reshape(-1, K).float().contiguous()
        lib = load_kernels()
        if lib is None:
            y = q8_matmul_reference(x2, self.qs, self.d)
        else:
            y = torch.empty(x2.shape[0], N)
            lib.ember_matmul(1, self.qs.data_ptr(), self.d.data_ptr(), None, N, K, x2.data_ptr(),
                             x2.shape[0], y.data_ptr(), torch.get_num_threads())
        return y.to(x.dtype).reshape(*x.shape[:-1], N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Q8Embedding(nn.Module):
    """Token lookup in a Q8 table; tied to a Q8Linear head it shares the head's buffers."""

    def __init__(self, table: Q8Linear):
        super().__init__()
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        self.qs, self.d = table.qs, table.d  # plain attributes: the head owns the buffers

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q = pair_unpermute(self.qs[ids]).float()  # (..., K)
        return (q.unflatten(-1, (-1, QK)) * self.d[ids].float()[..., None]).flatten(-2)
