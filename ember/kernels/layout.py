"""GGUF tensors → the native kernels' arrays, in numpy only (no torch).

Q4 weight (N, K): `qs` uint8 (N, K/2) — each block's 16 code bytes as in the file (low
nibbles inputs 0..15, high 16..31) — and `d`, `m` fp16 (N, K/32); value q·d + m (Q4_0:
m = -8d, exact in fp16). Q8 weight: `qs` int8 (N, K) in pair-permuted order (see q4.cpp)
and `d` fp16 (N, K/32); value q·d. Tensor bytes are read with os.pread, not through the
file's memory map, so the process holds only the copies it keeps.

>>> q, d = quantize_q8_0(np.linspace(-1, 1, 64, dtype=np.float32)[None])
>>> q.shape, d.shape, int(np.abs(q).max())
((1, 64), (1, 2), 127)
"""

from __future__ import annotations

import os

import numpy as np

QK = 32
Q4_TYPES = ("Q4_1", "Q4_0")


def native_unsupported(cfg) -> str | None:
    """Why the native kernels cannot run a model of this config (a ModelConfig), or None.

    >>> from ember.model.config import ModelConfig
    >>> native_unsupported(ModelConfig.tiny(d_ff=256))
    >>> native_unsupported(ModelConfig.tiny(mlp="gelu", norm="layernorm", pos_emb="learned"))
    'needs norm=rmsnorm (got layernorm)'
    """
    wants = {"norm": "rmsnorm", "pos_emb": "rope", "mlp": "swiglu", "norm_position": "pre"}
    for field, want in wants.items():
        if getattr(cfg, field) != want:
            return f"needs {field}={want} (got {getattr(cfg, field)})"
    if cfg.bias or not cfg.causal or cfg.embed_norm or cfg.n_token_types or cfg.moe is not None:
        return "needs a causal decoder without biases, embedding norm, token types or experts"
    if cfg.sliding_window is not None or cfg.n_sink_tokens:
        return "needs full attention (no sliding window or sink tokens)"
    for name, width in (("d_model", cfg.d_model), ("d_ff", cfg.d_ff), ("n_heads*head_dim", cfg.n_heads * cfg.head_dim)):
        if width % 64:
            return f"needs {name} to be a multiple of 64 (got {width})"
    if cfg.head_dim % 2 or cfg.n_heads % cfg.n_kv_heads:
        return f"needs an even head_dim and n_heads a multiple of n_kv_heads (got {cfg.head_dim}, {cfg.n_heads}/{cfg.n_kv_heads})"
    return None


def read_tensor(path: str | os.PathLike, info) -> np.ndarray:
    """The raw bytes of one tensor (an ember.core.gguf GGUFTensorInfo) of the GGUF at `path`,
    as a uint8 array read with os.pread."""
    with open(path, "rb") as f:
        buf = os.pread(f.fileno(), info.n_bytes, info.data_offset)
    if len(buf) != info.n_bytes:
        raise ValueError(f"{path}: short read of tensor {info.name} at offset {info.data_offset}")
    return np.frombuffer(buf, dtype=np.uint8)


def _blocks(raw: np.ndarray, N: int, K: int, nbytes: int, kind: str) -> np.ndarray:
    """Raw block bytes → a (N, K/32, nbytes) uint8 view."""
    buf = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    want = N * (K // QK) * nbytes
    if K % QK or buf.size != want:
        raise ValueError(f"{kind} data of {buf.size} bytes for shape ({N}, {K}); expected {want}")
    return buf.reshape(N, K // QK, nbytes)


def _fp16(b: np.ndarray) -> np.ndarray:
    """(..., 2) bytes → fp16 (...), one copy."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0]


def q4_arrays(raw: np.ndarray, shape, kind: str = "Q4_1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGUF Q4_1 (fp16 d, fp16 m, 16 bytes) or Q4_0 (fp16 d, 16 bytes) blocks of a weight
    (N, K) → qs (N, K/2), d, m (N, K/32).

    >>> blk = np.zeros(20, np.uint8); blk[:2] = np.array([0.5], np.float16).view(np.uint8); blk[4:] = 0x21
    >>> qs, d, m = q4_arrays(blk, (1, 32)); qs[0, :2].tolist(), d.tolist(), m.tolist()
    ([33, 33], [[0.5]], [[0.0]])
    """
    N, K = shape
    out = np.empty((N, K // 2), np.uint8), np.empty((N, K // QK), np.float16), np.empty((N, K // QK), np.float16)
    q4_into(raw, shape, kind, *out)
    return out


def q4_into(raw: np.ndarray, shape, kind: str, qs: np.ndarray, d: np.ndarray, m: np.ndarray) -> None:
    """q4_arrays written into qs (N, K/2) uint8, d, m (N, K/32) fp16 (e.g. row slices of a
    fused matrix's arrays): one strided copy each."""
    if kind not in Q4_TYPES:
        raise ValueError(f"not a Q4 block type: {kind}")
    N, K = shape
    b = _blocks(raw, N, K, 20 if kind == "Q4_1" else 18, kind)
    # Copy in 4-byte (Q4_1) or 2-byte (Q4_0) words: a strided copy of 16 single bytes is ~4x slower.
    words = b.view(np.uint32 if kind == "Q4_1" else np.uint16)  # (N, K/32, 5 or 9)
    np.copyto(qs.reshape(N, K // QK, -1).view(words.dtype), words[..., 1:])
    if kind == "Q4_1":
        dm = b[..., 0:4].view(np.float16)  # (N, K/32, 2): d, m
        np.copyto(d, dm[..., 0])
        np.copyto(m, dm[..., 1])
    else:
        np.copyto(d, b[..., 0:2].view(np.float16)[..., 0])
        np.multiply(np.float16(-8), d, out=m)


def pair_permute(q: np.ndarray) -> np.ndarray:
    """(N, K) in natural order → pair-permuted order (K % 64 == 0), the kernels' int8 layout.

    >>> pair_permute(np.arange(64)[None])[0, 16:20].tolist()
    [32, 33, 34, 35]
    """
    N, K = q.shape
    return np.ascontiguousarray(q.reshape(N, K // 64, 2, 2, 16).transpose(0, 1, 3, 2, 4)).reshape(N, K)


def q8_arrays(raw: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """GGUF Q8_0 blocks (fp16 d, 32 int8) of a weight (N, K) → qs int8 (N, K) pair-permuted, d."""
    N, K = shape
    b = _blocks(raw, N, K, 34, "Q8_0")
    return pair_permute(b[..., 2:].reshape(N, K).view(np.int8)), _fp16(b[..., 0:2])


def quantize_q8_0(w: np.ndarray, rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest Q8_0 of a float weight (N, K): codes int8 (N, K) in natural order and
    d fp16 (N, K/32), d = max|w|/127 per block (ties to even, as torch.round)."""
    N, K = w.shape
    q = np.empty((N, K), np.int8)
    d = np.empty((N, K // QK), np.float16)
    for i in range(0, N, rows):  # row chunks: small fp32 temporaries
        x = np.asarray(w[i : i + rows], dtype=np.float32).reshape(-1, K // QK, QK)
        dd = (np.abs(x).max(-1) / np.float32(127)).astype(np.float16)
        df = dd.astype(np.float32)
        inv = np.divide(np.float32(1), df, out=np.zeros_like(df), where=df > 0)
        q[i : i + rows] = np.clip(np.round(x * inv[..., None]), -127, 127).reshape(-1, K).astype(np.int8)
        d[i : i + rows] = dd
    return q, d


def quantize_q4_1(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest Q4_1 of a float weight (N, K) (ggml's reference: d = (max - min)/15,
    m = min) → qs (N, K/2), d, m (N, K/32)."""
    N, K = w.shape
    x = np.asarray(w, dtype=np.float32).reshape(N, K // QK, QK)
    lo, hi = x.min(-1), x.max(-1)
    d = ((hi - lo) / np.float32(15)).astype(np.float16)
    m = lo.astype(np.float16)
    df = d.astype(np.float32)
    inv = np.divide(np.float32(1), df, out=np.zeros_like(df), where=df > 0)
    q = np.clip(np.round((x - m.astype(np.float32)[..., None]) * inv[..., None]), 0, 15).astype(np.uint8)
    qs = q[..., :16] | (q[..., 16:] << 4)
    return np.ascontiguousarray(qs.reshape(N, K // 2)), d, m


def rope_inv_freq(cfg) -> np.ndarray:
    """RoPE inverse frequencies theta^(-2i/Dh), i < Dh/2, fp32 (the power in fp64, rounded);
    linear scaling divides them by its factor. Other scalings are a ValueError.

    >>> from ember.model.config import ModelConfig
    >>> rope_inv_freq(ModelConfig.tiny())[:2].tolist()
    [1.0, 0.3162277638912201]
    """
    dh = cfg.head_dim
    exponents = np.arange(0, dh, 2, dtype=np.int64).astype(np.float32) / np.float32(dh)
    inv = np.float32(1) / (np.float64(cfg.rope_theta) ** exponents.astype(np.float64)).astype(np.float32)
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    kind = rs.get("type", rs.get("rope_type"))
    if kind == "linear":
        return (inv / np.float32(rs["factor"])).astype(np.float32)
    raise ValueError(f"the native model supports RoPE scaling none or linear (got {kind!r})")
