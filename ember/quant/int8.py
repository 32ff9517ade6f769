"""Per-output-channel int8 weight-only linear on `torch.ops.aten._weight_int8pack_mm`.

The kernel (torch 2.13, CPU), as found by experiment: `_weight_int8pack_mm(x, w, scales)`
with x (M, K) 2-D and contiguous in its last dim, w int8 (N, K), scales (N,) in x's dtype
(a mismatch is an error) returns x @ (w · scales[:, None])ᵀ in x's dtype. **K must be a
multiple of 16: other K crash the process (segfault), they do not raise** — so the
constructor checks it. bf16 inputs are fast; fp32 inputs are ~15× slower.

GGUF Q8_0 (blocks of 32: fp16 d + 32 int8, value = q·d) has one scale per 32 inputs; a
per-channel int8 matrix can hold it only approximately, so Q8_0 is dequantized and
re-quantized (`Int8Linear.from_q8_0`); see apply.py for which target the output head gets.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ember.quant.int4 import QK, raw_bytes, weight_and_bias

COMPUTE_DTYPES = (torch.bfloat16, torch.float32)
Q8_0_BLOCK_BYTES = 34  # fp16 d, 32 int8


def int8_unsupported(out_features: int, in_features: int) -> str | None:
    """Why the int8 kernel cannot take an (N, K) weight, or None when it can.

    >>> int8_unsupported(50257, 768), int8_unsupported(64, 24)
    (None, 'in_features 24 is not a multiple of 16')
    """
    if in_features % 16:
        return f"in_features {in_features} is not a multiple of 16"
    return None


def quantize_int8(weight: torch.Tensor, compute_dtype=torch.bfloat16):
    """Symmetric per-row int8: weight (N, K) ≈ q (N, K) int8 in -127..127 · scale (N,).

    The scale is rounded to compute_dtype first, so the codes absorb that rounding.

    >>> q, s = quantize_int8(torch.tensor([[0.5, -1.0]]))
    >>> q.tolist()
    [[64, -127]]
    """
    N = weight.shape[0]
    q = torch.empty(weight.shape, dtype=torch.int8)
    scale = torch.empty(N, dtype=compute_dtype)
    # Row chunks keep the fp32 temporaries small: a whole 49152×576 head in fp32 is 113 MB,
    # and several such temporaries at once would set the load's peak memory.
    for i in range(0, N, _ROWS_PER_CHUNK):
        w = weight[i : i + _ROWS_PER_CHUNK].detach().float()
        amax = w.abs().amax(dim=1)  # (n,)
        sc = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).to(compute_dtype)
        q[i : i + _ROWS_PER_CHUNK] = torch.round(w / sc.float()[:, None]).clamp_(-127, 127)
        scale[i : i + _ROWS_PER_CHUNK] = sc
    return q, scale


_ROWS_PER_CHUNK = 4096


class Int8Linear(nn.Module):
    """y = x Wᵀ (+ b) with W stored as int8 and one scale per output row (≈ 1 byte per weight).

    >>> lin = Int8Linear.from_float(nn.Linear(64, 8))
    >>> lin(torch.randn(3, 64)).shape
    torch.Size([3, 8])
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, compute_dtype=torch.bfloat16
    ):
        super().__init__()
        why = int8_unsupported(out_features, in_features)
        if why:
            raise ValueError(f"Int8Linear({in_features}, {out_features}): {why}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype {compute_dtype} is not one of {COMPUTE_DTYPES}")
        self.in_features, self.out_features, self.compute_dtype = (
            in_features,
            out_features,
            compute_dtype,
        )
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("scales", torch.ones(out_features, dtype=compute_dtype))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_float(
        cls, linear_or_weight, group_size: int | None = None, compute_dtype=torch.bfloat16
    ):
        """Quantize an nn.Linear (keeping its bias) or a weight (N, K). `group_size` is accepted
        for a uniform call with Int4Linear and must be None: int8 is per channel."""
        if group_size is not None:
            raise ValueError(
                f"Int8Linear is per-channel; group_size must be None, got {group_size}"
            )
        weight, bias = weight_and_bias(linear_or_weight)
        N, K = weight.shape
        mod = cls(K, N, bias=bias is not None, compute_dtype=compute_dtype)
        mod.weight_int8, mod.scales = quantize_int8(weight, compute_dtype)
        if bias is not None:
            mod.bias = nn.Parameter(bias.detach().clone())
        return mod

    @classmethod
    def from_q8_0(cls, raw, shape, bias=None, compute_dtype=torch.bfloat16):
        """From GGUF Q8_0 blocks of a (N, K) weight: dequantized, then re-quantized per channel
        (approximate: Q8_0 has a scale per 32 inputs, this has one per row)."""
        mod = cls.from_float(dequantize_q8_0(raw, shape), compute_dtype=compute_dtype)
        if bias is not None:
            mod.bias = nn.Parameter(bias.detach().clone())
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel wants x in the scales' dtype; read it from the buffer, not the
        # constructor argument, so model.to(dtype) afterwards still runs (slower if not bf16).
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype).contiguous()  # (M, K)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales)  # (M, N)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    @torch.no_grad()
    def dequantize(self) -> torch.Tensor:
        """The weight the kernel uses, (N, K) fp32."""
        return self.weight_int8.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, compute_dtype={self.scales.dtype}"
        )


def dequantize_q8_0(raw, shape) -> torch.Tensor:
    """Q8_0 blocks (fp16 d, 32 int8; value = q·d) of a (N, K) weight → fp32 (N, K)."""
    N, K = (int(v) for v in shape)
    if K % QK:
        raise ValueError(f"Q8_0 weight of shape ({N}, {K}): in_features is not a multiple of {QK}")
    buf = raw_bytes(raw)
    want = N * (K // QK) * Q8_0_BLOCK_BYTES
    if buf.size != want:
        raise ValueError(f"Q8_0 data of {buf.size} bytes for shape ({N}, {K}); expected {want}")
    blocks = torch.from_numpy(np.array(buf)).reshape(N, K // QK, Q8_0_BLOCK_BYTES)
    d = blocks[..., 0:2].contiguous().view(torch.float16).float()  # (N, K/32, 1)
    q = blocks[..., 2:].contiguous().view(torch.int8).float()  # (N, K/32, 32)
    return (q * d).reshape(N, K)


class Int8Embedding(nn.Module):
    """Token embedding rows stored as int8 with one scale per row (≈ 1 byte per value).

    With tied embeddings the table is the int8 output head itself: `tied_to(head)` shares
    its buffers, so the model holds the matrix once, in int8 (llama.cpp likewise looks up
    rows of its Q8_0 `token_embd`). Rows come out in `out_dtype` (the residual stream's).

    >>> head = Int8Linear.from_float(torch.randn(10, 16))
    >>> emb = Int8Embedding.tied_to(head)
    >>> torch.allclose(emb(torch.tensor([3])), head.dequantize()[3:4])
    True
    """

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, out_dtype=torch.float32):
        super().__init__()
        self.register_buffer("weight_int8", weight_int8)  # (V, D)
        self.register_buffer("scales", scales)  # (V,)
        self.out_dtype = out_dtype

    @classmethod
    def tied_to(cls, head: Int8Linear, out_dtype=torch.float32) -> Int8Embedding:
        return cls(head.weight_int8, head.scales, out_dtype)

    @classmethod
    def from_float(cls, weight: torch.Tensor, out_dtype=None) -> Int8Embedding:
        q, s = quantize_int8(weight, torch.bfloat16)
        return cls(q, s, out_dtype or weight.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_int8[ids].to(self.out_dtype)  # (..., D)
        return rows * self.scales[ids].to(self.out_dtype)[..., None]
