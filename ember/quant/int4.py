"""Group-wise int4 weight-only linear on torch's CPU int4 kernel, and exact GGUF Q4_0/Q4_1 import.

The kernel pair (torch 2.13, CPU), as found by experiment (tests/quant/test_int4.py pins it):

* `torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, innerKTiles)`: q is int32 (N, K),
  one code 0..15 per element (NOT nibble-packed: uint8 input is rejected), N % 16 == 0.
  Returns uint8 (N, K/2). `innerKTiles` is ignored on CPU. The packed layout is internal:
  N is cut into blocks of 64 rows, each stored K-major, byte j of a k-row holding row j in
  the low nibble and row j+32 in the high nibble (tails of N % 64 rows differ) — treat it
  as opaque and always build it through the op.
* `torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, G, scales_and_zeros)`: x (M, K)
  2-D and contiguous; G in {32, 64, 128, 256} with K % G == 0; scales_and_zeros
  (K/G, N, 2) with [..., 0] = scale, [..., 1] = zero, in the dtype of x (a mismatch is an
  error). Returns x @ Wᵀ (M, N) in x's dtype, where W[n, k] = (q[n, k] - 8) · scale + zero
  of k's group. Accepted x dtypes: bf16 (fast), fp32 and fp16 (25–50× slower, fp32 exact).

So an asymmetric code w = q·s + lo becomes scale = s, zero = lo + 8s; GGUF Q4_1
(w = q·d + m) maps with scale = d, zero = m + 8d, and Q4_0 (w = (q - 8)·d) with
scale = d, zero = 0: the codes are kept exactly. With bf16 compute the scale and zero are
rounded to bf16 (8 significant bits vs fp16's 11), a relative error ≤ 2⁻⁹ per group —
well below the quantization step; compute_dtype=torch.float32 keeps them exact (slowly).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

GROUP_SIZES = (32, 64, 128, 256)
COMPUTE_DTYPES = (torch.bfloat16, torch.float32)
Q4_1_BLOCK_BYTES = 20  # fp16 d, fp16 m, 16 bytes of nibbles → 32 weights
Q4_0_BLOCK_BYTES = 18  # fp16 d, 16 bytes of nibbles → 32 weights
QK = 32  # weights per GGUF block


def int4_unsupported(out_features: int, in_features: int, group_size: int = 32) -> str | None:
    """Why the int4 kernel cannot take an (N, K) weight, or None when it can.

    >>> int4_unsupported(1536, 576), int4_unsupported(50257, 768) is not None
    (None, True)
    """
    if group_size not in GROUP_SIZES:
        return f"group_size {group_size} is not one of {GROUP_SIZES}"
    if in_features % group_size:
        return f"in_features {in_features} is not a multiple of group_size {group_size}"
    if out_features % 16:
        return f"out_features {out_features} is not a multiple of 16"
    return None


def quantize_int4(weight: torch.Tensor, group_size: int = 32, compute_dtype=torch.bfloat16):
    """Round-to-nearest asymmetric int4 per group of `group_size` inputs.

    weight (N, K) → codes int32 (N, K) in 0..15, scale and zero (N, K/G) in compute_dtype,
    such that weight ≈ (codes - 8) · scale + zero. Scale and zero are rounded to
    compute_dtype *before* the codes are chosen, so the codes absorb that rounding.

    >>> q, s, z = quantize_int4(torch.linspace(-1, 1, 32)[None])
    >>> q.min().item(), q.max().item()
    (0, 15)
    """
    N, K = weight.shape
    w = weight.detach().float().reshape(N, K // group_size, group_size)  # (N, K/G, G)
    lo, hi = w.amin(-1), w.amax(-1)  # (N, K/G)
    # A constant group gets a tiny scale: its codes are all 0 and zero - 8·scale ≈ lo.
    scale = torch.where(hi > lo, (hi - lo) / 15, torch.full_like(lo, 1e-8)).to(compute_dtype)
    zero = (lo + 8 * scale.float()).to(compute_dtype)
    s, z = scale.float()[..., None], zero.float()[..., None]
    q = torch.round((w - z) / s + 8).clamp_(0, 15).to(torch.int32).reshape(N, K)
    return q, scale, zero


def weight_and_bias(linear_or_weight) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (N, K), bias or None) of an nn.Linear, or of a bare 2-D weight."""
    if isinstance(linear_or_weight, nn.Linear):
        weight, bias = linear_or_weight.weight, linear_or_weight.bias
    else:
        weight, bias = linear_or_weight, None
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    return weight, bias


class Int4Linear(nn.Module):
    """y = x Wᵀ (+ b) with W stored as group-wise int4 (≈ 0.56 bytes per weight at G=32).

    The input is cast to compute_dtype at the matmul and the result back to x's dtype, so
    the model around it may stay fp32 (norms, RoPE and attention are cheaper in fp32 here).

    >>> lin = Int4Linear.from_float(nn.Linear(64, 32, bias=False))
    >>> lin(torch.randn(2, 3, 64)).shape
    torch.Size([2, 3, 32])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        group_size: int = 32,
        compute_dtype: torch.dtype = torch.bfloat16,
    ):
        super().__init__()
        why = int4_unsupported(out_features, in_features, group_size)
        if why:
            raise ValueError(f"Int4Linear({in_features}, {out_features}): {why}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype {compute_dtype} is not one of {COMPUTE_DTYPES}")
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.compute_dtype = group_size, compute_dtype
        N, K = out_features, in_features
        self.register_buffer("weight_packed", torch.zeros(N, K // 2, dtype=torch.uint8))
        self.register_buffer(
            "scales_and_zeros", torch.zeros(K // group_size, N, 2, dtype=compute_dtype)
        )
        self.bias = nn.Parameter(torch.zeros(N)) if bias else None

    # ---- constructors ---------------------------------------------------------------------

    @classmethod
    def from_codes(cls, codes, scale, zero, group_size=32, bias=None, compute_dtype=torch.bfloat16):
        """From codes int32 (N, K) in 0..15 and scale, zero (N, K/G): W = (codes - 8)·scale + zero."""
        N, K = codes.shape
        mod = cls(K, N, bias=bias is not None, group_size=group_size, compute_dtype=compute_dtype)
        mod.weight_packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes.to(torch.int32).contiguous(), 1
        )
        sz = torch.stack([scale.float().t(), zero.float().t()], dim=-1)  # (K/G, N, 2)
        mod.scales_and_zeros = sz.to(compute_dtype).contiguous()
        if bias is not None:
            mod.bias = nn.Parameter(bias.detach().clone())
        return mod

    @classmethod
    def from_float(cls, linear_or_weight, group_size: int = 32, compute_dtype=torch.bfloat16):
        """Quantize an nn.Linear (keeping its bias) or a weight (N, K) with round-to-nearest."""
        weight, bias = weight_and_bias(linear_or_weight)
        N, K = weight.shape
        why = int4_unsupported(N, K, group_size)
        if why:
            raise ValueError(f"cannot quantize a ({N}, {K}) weight to int4: {why}")
        q, s, z = quantize_int4(weight, group_size, compute_dtype)
        return cls.from_codes(q, s, z, group_size, bias, compute_dtype)

    @classmethod
    def from_q4_1(cls, raw, shape, bias=None, compute_dtype=torch.bfloat16):
        """From GGUF Q4_1 blocks of a weight of torch shape (N, K) = (out, in), codes kept exactly.

        A block covers 32 consecutive inputs of one row: fp16 d, fp16 m, then 16 bytes whose
        low nibbles are elements 0..15 and high nibbles 16..31; value = q·d + m.
        """
        q, d, m = _unpack_blocks(raw, shape, Q4_1_BLOCK_BYTES, "Q4_1")
        zero = m + 8 * d  # fp32 here; rounded once, to compute_dtype, in from_codes
        return cls.from_codes(q, d, zero, QK, bias, compute_dtype)

    @classmethod
    def from_q4_0(cls, raw, shape, bias=None, compute_dtype=torch.bfloat16):
        """From GGUF Q4_0 blocks (fp16 d, 16 bytes of nibbles; value = (q - 8)·d), exactly."""
        q, d, _ = _unpack_blocks(raw, shape, Q4_0_BLOCK_BYTES, "Q4_0")
        return cls.from_codes(q, d, torch.zeros_like(d), QK, bias, compute_dtype)

    # ---- use ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel wants x in the scales' dtype; read it from the buffer, not the
        # constructor argument, so model.to(dtype) afterwards still runs (slower if not bf16).
        x2 = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype).contiguous()  # (M, K)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.weight_packed, self.group_size, self.scales_and_zeros
        )  # (M, N)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        """The stored codes, int32 (N, K) in 0..15, read back through the kernel: an identity
        input with scale 1 and zero 8 returns q exactly (small integers are exact in bf16)."""
        K, N, G = self.in_features, self.out_features, self.group_size
        unit = torch.tensor([1.0, 8.0], dtype=torch.bfloat16).expand(K // G, N, 2).contiguous()
        eye = torch.eye(K, dtype=torch.bfloat16)
        q_t = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight_packed, G, unit)  # (K, N)
        return q_t.t().to(torch.int32).contiguous()

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The weight the kernel uses, (N, K) fp32: (codes - 8)·scale + zero, computed in fp32."""
        G = self.group_size
        s = self.scales_and_zeros[..., 0].t().float().repeat_interleave(G, dim=1)  # (N, K)
        z = self.scales_and_zeros[..., 1].t().float().repeat_interleave(G, dim=1)
        return (self.codes().float() - 8) * s + z

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group_size={self.group_size}, "
            f"compute_dtype={self.scales_and_zeros.dtype}"
        )


def raw_bytes(raw) -> np.ndarray:
    """Raw GGUF block data (bytes, numpy array of any shape/dtype, uint8 tensor) → flat uint8."""
    if isinstance(raw, torch.Tensor):
        raw = raw.cpu().numpy()
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return np.frombuffer(raw, dtype=np.uint8)
    return np.ascontiguousarray(raw).view(np.uint8).reshape(-1)


def _unpack_blocks(raw, shape, block_bytes: int, kind: str):
    """GGUF 4-bit blocks → codes int32 (N, K), d and m (N, K/32) fp32 (m is zeros for Q4_0)."""
    N, K = (int(v) for v in shape)
    if K % QK:
        raise ValueError(
            f"{kind} weight of shape ({N}, {K}): in_features is not a multiple of {QK}"
        )
    buf = raw_bytes(raw)
    want = N * (K // QK) * block_bytes
    if buf.size != want:
        raise ValueError(f"{kind} data of {buf.size} bytes for shape ({N}, {K}); expected {want}")
    blocks = torch.from_numpy(buf.copy()).reshape(N, K // QK, block_bytes)  # (N, K/32, bytes)
    d = blocks[..., 0:2].contiguous().view(torch.float16)[..., 0].float()  # (N, K/32)
    if block_bytes == Q4_1_BLOCK_BYTES:
        m = blocks[..., 2:4].contiguous().view(torch.float16)[..., 0].float()
    else:
        m = torch.zeros_like(d)
    qs = blocks[..., block_bytes - 16 :].to(torch.int32)  # (N, K/32, 16)
    q = torch.cat([qs & 0xF, qs >> 4], dim=-1).reshape(N, K)  # low nibbles 0..15, high 16..31
    return q, d, m


def dequantize_q4_1(raw, shape) -> torch.Tensor:
    """Q4_1 blocks → fp32 weight (N, K), value = q·d + m (for checks against a loaded model)."""
    q, d, m = _unpack_blocks(raw, shape, Q4_1_BLOCK_BYTES, "Q4_1")
    N, K = q.shape
    w = q.float().reshape(N, K // QK, QK) * d[..., None] + m[..., None]
    return w.reshape(N, K)


def dequantize_q4_0(raw, shape) -> torch.Tensor:
    """Q4_0 blocks → fp32 weight (N, K), value = (q - 8)·d."""
    q, d, _ = _unpack_blocks(raw, shape, Q4_0_BLOCK_BYTES, "Q4_0")
    N, K = q.shape
    return ((q.float().reshape(N, K // QK, QK) - 8) * d[..., None]).reshape(N, K)


def linear_int4_reference(x, codes, scale, zero, group_size=32):
    """Plain-PyTorch reference of the kernel: F.linear(x, (codes - 8)·scale + zero)."""
    N, K = codes.shape
    s = scale.float().repeat_interleave(group_size, dim=1)  # (N, K)
    z = zero.float().repeat_interleave(group_size, dim=1)
    return F.linear(x.float(), (codes.float() - 8) * s + z)
